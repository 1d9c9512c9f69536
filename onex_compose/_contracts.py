"""Pydantic models of the YAML mixin contract (seed 002's schema) and their error reporting.

A mixin contract (``capabilities/mixin_<name>.yaml``) describes one capability: its name and
version, the node types it applies to, its actions, its configuration section
``<capability>_config`` (whose keys are the fields of the capability's config model), the
shapes of its outputs, what it provides and needs, the metrics it records, and, in our
``composition`` section, how the engine composes it.

Every model forbids unknown keys: a typo is an error with a did-you-mean, never dropped
(omnibase_core's ``extra="ignore"`` hid exactly those). :func:`problems_from_error` turns a
Pydantic ``ValidationError`` into :class:`~onex_compose._loading.ContractProblem` records in
the validator's wording (seed 002: ``'description' field required``, ``'INVALID_TYPE' not in
[COMPUTE, EFFECT, REDUCER, ORCHESTRATOR]``), each with its field path and, when the data came
from a file, its line.

Constructing a model directly raises Pydantic's ``ValidationError`` (as any Pydantic model
does); the loading functions (``load_contract``, the validator) raise one
:class:`~onex_compose.exceptions.ContractError` listing every problem.
"""

from __future__ import annotations

import math
import re
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from onex_compose import _redact
from onex_compose._loading import ContractProblem, LineIndex, PathPart
from onex_compose.exceptions import did_you_mean

__all__ = [
    "NODE_TYPES",
    "ModelComposition",
    "ModelMixinAction",
    "ModelMixinContract",
    "ModelMixinDependency",
    "ModelMixinMetric",
    "ModelOutputField",
    "ModelRequiredDependency",
    "ModelSemVer",
    "check_node_type",
    "problems_from_error",
]

NODE_TYPES: tuple[str, ...] = ("COMPUTE", "EFFECT", "REDUCER", "ORCHESTRATOR")
_NODE_TYPES_TEXT = "[" + ", ".join(NODE_TYPES) + "]"
_SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")
_MIXIN_NAME = re.compile(r"^mixin_[a-z][a-z0-9_]*$")
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_REF = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*(:[A-Za-z_][A-Za-z0-9_.]*)?$")


def check_node_type(value: Any) -> str:
    """Validate one node type name (seed 002's wording on failure).

    Example:
        >>> check_node_type("EFFECT")
        'EFFECT'
        >>> check_node_type("INVALID_TYPE")
        Traceback (most recent call last):
        ...
        ValueError: 'INVALID_TYPE' not in [COMPUTE, EFFECT, REDUCER, ORCHESTRATOR]
    """
    text = getattr(value, "value", value)
    if isinstance(text, str) and text in NODE_TYPES:
        return text
    hint = ""
    if isinstance(text, str) and text.upper() in NODE_TYPES:
        hint = f" (node types are upper case: {text.upper()!r})"
    raise ValueError(f"{text!r} not in {_NODE_TYPES_TEXT}{hint}")


def _snake(what: str) -> Any:
    def check(value: str) -> str:
        if not _SNAKE.match(value):
            fixed = re.sub(r"[^a-z0-9_]+", "_", re.sub(r"(?<!^)(?=[A-Z])", "_", value).lower())
            fixed = fixed.strip("_") or "name"
            raise ValueError(
                f"{what} {value!r} must be snake_case (lowercase letters, digits, underscores, "
                f"starting with a letter), e.g. {fixed!r}")
        return value

    return AfterValidator(check)


def _non_blank(what: str) -> Any:
    def check(value: str) -> str:
        if not value.strip():
            raise ValueError(f"{what} must not be empty")
        return value

    return AfterValidator(check)


NodeTypeName = Annotated[StrictStr, AfterValidator(check_node_type)]
SnakeName = Annotated[StrictStr, _snake("name")]
LabelName = Annotated[StrictStr, _snake("label")]
Text = Annotated[StrictStr, _non_blank("text")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSemVer(_Strict):
    """A semantic version as an object (``{major: 1, minor: 0, patch: 0}``).

    Example:
        >>> str(ModelSemVer(major=1, minor=2, patch=3))
        '1.2.3'
    """

    major: StrictInt = Field(ge=0)
    minor: StrictInt = Field(ge=0)
    patch: StrictInt = Field(ge=0)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    @classmethod
    def parse(cls, text: str) -> ModelSemVer:
        """Parse ``"1.2.3"`` (used where a string form is accepted, e.g. node contracts)."""
        m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", text.strip())
        if not m:
            raise ValueError(f"version {text!r} is not MAJOR.MINOR.PATCH (e.g. '1.0.0')")
        return cls(major=int(m[1]), minor=int(m[2]), patch=int(m[3]))


class ModelMixinAction(_Strict):
    """One action a mixin offers (seed 002's ``actions`` entries).

    ``required`` and ``timeout_ms`` have defaults (seed 002's own "correct" action example
    omits them); the validator warns when they are left out.
    """

    name: SnakeName
    description: Text
    inputs: list[StrictStr]
    outputs: list[StrictStr]
    required: StrictBool = True
    timeout_ms: StrictInt = Field(default=30000, ge=1, le=300000)


OUTPUT_TYPES = ("string", "integer", "float", "boolean", "timestamp", "array", "object")


class ModelOutputField(_Strict):
    """The type of one field of an output model: ``"string"``, or ``{type: array, items: ...}``.

    A bare type name is accepted wherever a field type is expected and serialised back as one.
    """

    type: Literal["string", "integer", "float", "boolean", "timestamp", "array", "object"]
    items: ModelOutputField | None = None
    properties: dict[StrictStr, ModelOutputField] | None = None
    description: StrictStr | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare_type(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"type": data}
        return data

    @model_validator(mode="after")
    def _shape(self) -> ModelOutputField:
        if self.items is not None and self.type != "array":
            raise ValueError(f"'items' is only allowed with type 'array' (type is {self.type!r})")
        if self.properties is not None and self.type != "object":
            raise ValueError(
                f"'properties' is only allowed with type 'object' (type is {self.type!r})")
        return self

    @model_serializer(mode="wrap")
    def _ser(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if v is not None}
            if set(data) == {"type"}:
                return data["type"]
        return data


class ModelMixinDependency(_Strict):
    """Something the mixin provides (seed 002's ``dependencies`` entries)."""

    name: Text
    type: Literal["capability", "protocol", "service", "resource"]
    description: StrictStr = ""


class ModelRequiredDependency(ModelMixinDependency):
    """Something the mixin needs (``requires_dependencies``); ``optional: true`` = order-only."""

    optional: StrictBool = False


class ModelMixinMetric(_Strict):
    """A metric the mixin records; ``buckets`` only on histograms, strictly increasing."""

    name: SnakeName
    type: Literal["counter", "gauge", "histogram"]
    description: StrictStr = ""
    labels: list[LabelName] = Field(default_factory=list)
    buckets: list[StrictFloat] | None = None

    @model_validator(mode="after")
    def _buckets(self) -> ModelMixinMetric:
        if len(set(self.labels)) != len(self.labels):
            dup = next(x for x in self.labels if self.labels.count(x) > 1)
            raise ValueError(f"label {dup!r} listed twice")
        if self.buckets is None:
            return self
        if self.type != "histogram":
            raise ValueError(
                f"'buckets' is only allowed on histogram metrics (this one is a {self.type}); "
                "remove it or change the type to histogram")
        if not self.buckets:
            raise ValueError("'buckets' must list at least one bucket boundary")
        for value in self.buckets:
            if not math.isfinite(value):
                raise ValueError(f"bucket boundary {value} is not a finite number")
        for a, b in zip(self.buckets, self.buckets[1:], strict=False):
            if b <= a:
                raise ValueError(
                    f"'buckets' must be strictly increasing: {b:g} comes after {a:g}")
        return self


class ModelComposition(_Strict):
    """onex-compose's ``composition`` section (docs/writing-capabilities.md); all keys optional.

    Attributes:
        capability: the capability's name (default: ``mixin_name`` without ``mixin_``).
        module: module of the mixin (default ``onex_compose.capabilities.<capability>``).
        mixin_class: the mixin class (default ``Mixin`` + CamelCase name).
        config_model: its Pydantic config model, ``Name`` (in ``module``) or ``module:Name``.
        rank: order among unrelated capabilities (default 500; lower first).
        guard_rank: position in the ``process()`` pipeline (lower is outer).
        subcontract_key: its key in node contracts when not its name (event_bus: event_type).
        aliases: other names it answers to.
        before, after: order-only constraints.
        conflicts: capabilities it cannot be composed with.
        setup, start, close: hook method names, when not ``<hook>_<capability>``.
        provides: protocols it provides, besides those in ``dependencies``.
    """

    capability: SnakeName | None = None
    module: StrictStr | None = None
    mixin_class: StrictStr | None = None
    config_model: StrictStr | None = None
    rank: StrictInt | None = None
    guard_rank: StrictInt | None = None
    subcontract_key: SnakeName | None = None
    aliases: list[SnakeName] = Field(default_factory=list)
    before: list[SnakeName] = Field(default_factory=list)
    after: list[SnakeName] = Field(default_factory=list)
    conflicts: list[SnakeName] = Field(default_factory=list)
    setup: StrictStr | None = None
    start: StrictStr | None = None
    close: StrictStr | None = None
    provides: list[Text] = Field(default_factory=list)

    @field_validator("module")
    @classmethod
    def _module(cls, value: str | None) -> str | None:
        if value is not None and not _DOTTED.match(value):
            raise ValueError(f"module {value!r} is not a dotted module path (e.g. 'pkg.caching')")
        return value

    @field_validator("mixin_class", "setup", "start", "close")
    @classmethod
    def _identifier(cls, value: str | None) -> str | None:
        if value is not None and not value.isidentifier():
            raise ValueError(f"{value!r} is not a Python identifier")
        return value

    @field_validator("config_model")
    @classmethod
    def _ref(cls, value: str | None) -> str | None:
        if value is not None and not _REF.match(value):
            raise ValueError(
                f"config_model {value!r} must be 'ClassName' or 'module.path:ClassName'")
        return value

    @model_serializer(mode="wrap")
    def _ser(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None and v != []}
        return data


def _capability_of(data: Mapping[str, Any]) -> str | None:
    comp = data.get("composition")
    if isinstance(comp, Mapping) and isinstance(comp.get("capability"), str):
        return str(comp["capability"])
    name = data.get("mixin_name")
    if isinstance(name, str) and name.startswith("mixin_") and len(name) > 6:
        return name[6:]
    return None


def config_keys(data: Mapping[str, Any]) -> list[str]:
    """The accepted names of a contract's config section (``<capability>_config`` first).

    The reference schema names it ``{mixin_name}_config``; seed 002 and every example drop the
    ``mixin_`` prefix. Both are accepted.
    """
    cap = _capability_of(data)
    if cap is None:
        return []
    keys = [f"{cap}_config", f"mixin_{cap}_config"]
    name = data.get("mixin_name")
    if isinstance(name, str) and name.startswith("mixin_") and name[6:] != cap:
        keys.append(f"{name[6:]}_config")
    return keys


class ModelMixinContract(_Strict):
    """A YAML mixin contract (seed 002's schema plus our ``composition`` section).

    The configuration section is written ``<capability>_config`` in YAML (for
    ``mixin_error_handling``: ``error_handling_config``) and available here as :attr:`config`;
    :meth:`to_data` and ``model_dump()`` write it back under its YAML name.

    Example:
        >>> c = ModelMixinContract.model_validate({
        ...     "mixin_name": "mixin_example",
        ...     "mixin_version": {"major": 1, "minor": 0, "patch": 0},
        ...     "description": "Example mixin description",
        ...     "applicable_node_types": ["COMPUTE", "EFFECT"],
        ...     "actions": [{"name": "process_data", "description": "Process data",
        ...                  "inputs": ["data"], "outputs": ["result"]}],
        ...     "example_config": {"enabled": True}})
        >>> c.capability, c.config_key, c.config
        ('example', 'example_config', {'enabled': True})
    """

    SECTION_KEYS: ClassVar[tuple[str, ...]] = (
        "mixin_name", "mixin_version", "description", "applicable_node_types", "actions",
        "output_models", "dependencies", "requires_dependencies", "metrics", "composition")

    mixin_name: StrictStr
    mixin_version: ModelSemVer
    description: StrictStr
    applicable_node_types: list[NodeTypeName] = Field(min_length=1)
    actions: list[ModelMixinAction] = Field(min_length=1)
    config: dict[StrictStr, Any] | None = None
    output_models: dict[SnakeName, dict[StrictStr, ModelOutputField]] = Field(
        default_factory=dict)
    dependencies: list[ModelMixinDependency] = Field(default_factory=list)
    requires_dependencies: list[ModelRequiredDependency] = Field(default_factory=list)
    metrics: list[ModelMixinMetric] = Field(default_factory=list)
    composition: ModelComposition | None = None

    @model_validator(mode="before")
    @classmethod
    def _config_section(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        present = [k for k in config_keys(data) if k in data]
        if present and "config" not in data:
            data["config"] = data.pop(present[0])
        return data

    @field_validator("mixin_name")
    @classmethod
    def _mixin_name(cls, value: str) -> str:
        if not _MIXIN_NAME.match(value):
            fixed = "mixin_" + re.sub(r"[^a-z0-9_]+", "_", value.lower().removeprefix(
                "mixin_").removeprefix("mixin-")).strip("_")
            raise ValueError(
                f"mixin_name {value!r} must be 'mixin_<capability>' in snake_case "
                f"(underscores, not hyphens), e.g. {fixed!r}")
        return value

    @field_validator("mixin_version", mode="before")
    @classmethod
    def _version_object(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError(
                f"mixin_version must be an object {{major, minor, patch}}, e.g. "
                f"{{major: 1, minor: 0, patch: 0}}; got the string {value!r}")
        return value

    @field_validator("description")
    @classmethod
    def _description(cls, value: str) -> str:
        n = len(value.strip())
        if not 20 <= n <= 500:
            raise ValueError(f"'description' must be 20-500 characters long, got {n}")
        return value

    @field_validator("applicable_node_types")
    @classmethod
    def _unique_types(cls, value: list[str]) -> list[str]:
        dup = [t for i, t in enumerate(value) if t in value[:i]]
        if dup:
            raise ValueError(f"node type {dup[0]!r} listed twice")
        return value

    @field_validator("actions")
    @classmethod
    def _unique_actions(cls, value: list[ModelMixinAction]) -> list[ModelMixinAction]:
        names = [a.name for a in value]
        dup = [n for i, n in enumerate(names) if n in names[:i]]
        if dup:
            raise ValueError(f"action {dup[0]!r} defined twice")
        return value

    @field_validator("metrics")
    @classmethod
    def _unique_metrics(cls, value: list[ModelMixinMetric]) -> list[ModelMixinMetric]:
        names = [m.name for m in value]
        dup = [n for i, n in enumerate(names) if n in names[:i]]
        if dup:
            raise ValueError(f"metric {dup[0]!r} defined twice")
        return value

    @field_validator("config")
    @classmethod
    def _config_keys(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        for key in value or {}:
            if not _SNAKE.match(key):
                raise ValueError(f"config key {key!r} must be snake_case")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModelMixinContract:
        comp = self.composition
        if comp is not None and comp.capability is not None:
            expected = f"mixin_{comp.capability}"
            if self.mixin_name != expected:
                raise ValueError(
                    f"composition.capability is {comp.capability!r} but mixin_name is "
                    f"{self.mixin_name!r}; mixin_name must be {expected!r}")
        return self

    @property
    def capability(self) -> str:
        """The capability's canonical name (``mixin_name`` without ``mixin_``)."""
        if self.composition is not None and self.composition.capability:
            return self.composition.capability
        return self.mixin_name.removeprefix("mixin_")

    @property
    def config_key(self) -> str:
        """The YAML name of the configuration section (``<capability>_config``)."""
        return f"{self.capability}_config"

    @property
    def subcontract_key(self) -> str:
        """The key of this capability's configuration in node contracts."""
        if self.composition is not None and self.composition.subcontract_key:
            return self.composition.subcontract_key
        return self.capability

    @model_serializer(mode="wrap")
    def _ser(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            out: dict[str, Any] = {}
            for key, value in data.items():
                if key == "config":
                    if value is not None:
                        out[self.config_key] = value
                elif key == "composition" and value is None:
                    continue
                else:
                    out[key] = value
            return out
        return data

    def to_data(self) -> dict[str, Any]:
        """The contract as YAML-shaped plain data (``yaml.safe_dump`` can write it)."""
        return self.model_dump(mode="json")  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------
# Pydantic errors -> validator problems

_TYPE_WORDS = {
    "int_type": "an integer", "int_parsing": "an integer", "bool_type": "true or false",
    "bool_parsing": "true or false", "string_type": "a string", "list_type": "a list",
    "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
    "float_type": "a number", "float_parsing": "a number", "int_from_float": "an integer",
    "tuple_type": "a list", "set_type": "a list", "enum": "one of the allowed values",
}


_BOUNDS = {"greater_than_equal": "at least", "less_than_equal": "at most",
           "greater_than": "greater than", "less_than": "less than"}


class ProblemList(ValueError):
    """A ``ValueError`` carrying structured problems (raised inside validators).

    Pydantic keeps the exception in the error's context, so :func:`problems_from_error` can
    expand it back into one problem per entry, each with its own path and file.
    """

    def __init__(self, problems: Sequence[ContractProblem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(p.render() for p in self.problems))


def _shown(value: Any, path: Sequence[PathPart]) -> str:
    """A rejected value as an error quotes it: scrubbed and cut by the one scrubber, and not at
    all under a field whose name may hold a secret (``*url``, ``*password``, ``*key``...)."""
    if any(isinstance(p, str) and _redact.sensitive_field(p) for p in path[-1:]):
        return "(value not shown: the field may hold a secret)"
    return _redact.quote(value, limit=60)


def _describe_input(value: Any, path: Sequence[PathPart] = ()) -> str:
    kind = {str: "the string", int: "the integer", float: "the number", bool: "the boolean",
            list: "a list", dict: "a mapping", type(None): "null"}.get(type(value), type(
                value).__name__)
    if value is None:
        return "null"
    return f"{kind} {_shown(value, path)}"


def _unwrap(tp: Any) -> list[Any]:
    """Candidate model classes a field annotation leads to (through Optional/list/dict)."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _unwrap(typing.get_args(tp)[0])
    models = getattr(tp, "__onex_models__", None)  # a custom type validated as these models
    if models:
        return list(models)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    out: list[Any] = []
    for arg in typing.get_args(tp):
        out.extend(_unwrap(arg))
    return out


def _model_at(root: type[BaseModel], loc: Sequence[PathPart],
              data: Mapping[str, Any] | None = None) -> type[BaseModel] | None:
    """The model class whose field set applies at ``loc`` (for did-you-mean on unknown keys).

    Where a field is a union of models, the candidate sharing most keys with ``data`` wins.
    """
    candidates: list[type[BaseModel]] = [root]
    for part in loc:
        if not isinstance(part, str):
            continue  # list index: same models
        tagged = [c for c in candidates if getattr(c, "__onex_tag__", None) == part]
        if tagged:  # a union tag Pydantic put into the loc names the branch it validated
            candidates = tagged
            continue
        nxt: list[type[BaseModel]] = []
        for model in candidates:
            field = model.model_fields.get(part)
            if field is not None:
                nxt.extend(c for c in _unwrap(field.annotation) if c is not BaseModel)
        if nxt:
            candidates = nxt
        # else: a dict key or a union tag: stay on the same models
    if not candidates:
        return None
    keys = set(data or ())
    return max(candidates, key=lambda m: len(keys & set(m.model_fields)))


def known_keys(model: type[BaseModel], data: Any = None) -> list[str]:
    """The keys a YAML mapping for ``model`` may hold (the YAML spelling)."""
    keys = [n for n in model.model_fields if not (model is ModelMixinContract and n == "config")]
    if model is ModelMixinContract and isinstance(data, Mapping):
        keys += config_keys(data)[:1] or ["<capability>_config"]
    return keys


def _clean_loc(loc: Sequence[Any], data: Any) -> tuple[tuple[PathPart, ...], Any, bool]:
    """Drop Pydantic's union/function tags from ``loc``; return (path, parent value, complete).

    ``complete`` is false when the last element is not in the data (a missing field).
    """
    out: list[PathPart] = []
    cur = data
    parent = data
    complete = True
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        in_mapping = isinstance(cur, Mapping) and part in cur
        in_list = (isinstance(cur, list | tuple) and isinstance(part, int)
                   and 0 <= part < len(cur))
        if in_mapping or in_list:
            parent, cur = cur, cur[part]
            out.append(part)
        elif isinstance(cur, BaseModel) and isinstance(part, str) and part in type(
                cur).model_fields:
            parent, cur = cur, getattr(cur, part)
            out.append(part)
        elif last and isinstance(part, str) and _SNAKE.match(part) and isinstance(
                cur, Mapping | BaseModel):
            parent = cur
            out.append(part)
            complete = False
        # else: a union tag / validator name Pydantic put into the loc: skip it
    return tuple(out), parent, complete


def _expected_literals(ctx: Mapping[str, Any]) -> str:
    expected = str(ctx.get("expected", ""))
    parts = re.split(r", | or ", expected)
    return "[" + ", ".join(p.strip().strip("'\"") for p in parts if p.strip()) + "]"


def _check_of(kind: str, path: Sequence[PathPart], root_kind: str) -> str:
    """Which validator check a problem belongs to.

    A missing top-level field is a "required fields" problem; anything about node types a
    "node type" problem; anything inside an action (a missing ``outputs`` included, as in
    seed 002) an "action" problem; broken references of a node contract a "references"
    problem; the rest "schema".
    """
    head = path[0] if path else None
    if kind == "missing" and len(path) <= 1:
        return "required"
    if head in ("applicable_node_types", "node_type"):
        return "node_types"
    if head == "actions" and root_kind == "mixin":
        return "actions"
    if head == "subcontracts" and root_kind == "node":
        return "references"
    if kind == "missing":
        return "required"
    return "schema"


def problems_from_error(exc: ValidationError, model: type[BaseModel], data: Any, *,
                        lines: LineIndex | None = None, file: str | None = None,
                        prefix: Sequence[PathPart] = (),
                        root_kind: str = "mixin") -> list[ContractProblem]:
    """Turn a Pydantic ``ValidationError`` into problems in the validator's wording.

    Args:
        exc: the error raised by ``model.model_validate(data)``.
        model: the model that was validated.
        data: the input data (to clean locations and name unknown keys).
        lines: where each path is written (from :func:`~onex_compose._loading.load_yaml`).
        file: the file name for messages.
        prefix: a path to prepend (when ``data`` sits inside a larger document).
        root_kind: ``"mixin"`` or ``"node"`` (decides which check a problem belongs to).

    Example:
        >>> from pydantic import ValidationError
        >>> data = {"mixin_name": "mixin_example", "mixin_version": {"major": 1, "minor": 0,
        ...         "patch": 0}}
        >>> try:
        ...     ModelMixinContract.model_validate(data)
        ... except ValidationError as e:
        ...     print(problems_from_error(e, ModelMixinContract, data)[0].message)
        'description' field required
    """
    out: list[ContractProblem] = []
    for err in exc.errors(include_url=False):
        kind = err.get("type", "")
        ctx = err.get("ctx") or {}
        loc = list(err.get("loc", ()))
        error_obj = ctx.get("error")
        if isinstance(error_obj, ProblemList):
            base_path, _, _ = _clean_loc(loc, data)
            for p in error_obj.problems:
                # a problem in another file (a referenced contract) keeps its own path and line
                full = tuple(p.path) if p.file else (*prefix, *base_path, *p.path)
                line = p.line if p.file else (lines.line_of(full) if lines else None)
                out.append(ContractProblem(
                    p.message, full, line, p.file or file,
                    p.check if p.check != "schema" else _check_of("", full, root_kind),
                    p.severity))
            continue
        path, parent, complete = _clean_loc(loc, data)
        full = (*prefix, *path)
        inp = err.get("input")
        if kind == "missing":
            field = path[-1] if path and not complete else (loc[-1] if loc else "?")
            where = full[:-1] if path and not complete else full
            message = f"'{field}' field required"
            line = lines.line_of(where) if lines else None
            out.append(ContractProblem(message, tuple(where), line, file,
                                       _check_of("missing", full, root_kind),
                                       key=str(field)))
            continue
        if kind == "extra_forbidden":
            key = str(path[-1]) if path else str(loc[-1] if loc else "?")
            parent_data = parent if isinstance(parent, Mapping) else None
            owner = _model_at(model, loc[:-1], parent_data)
            known = known_keys(owner, parent_data) if owner is not None else []
            hint = did_you_mean(key, known)
            if not hint and key.endswith("_config") and owner is ModelMixinContract:
                hint = f" (the config section must be named after the capability: {known[-1]!r})"
            message = f"unknown key {key!r}{hint}"
            if known:
                message += f"; known keys: {', '.join(known)}"
            line = lines.line_of(full) if lines else None
            out.append(ContractProblem(message, tuple(full[:-1]), line, file,
                                       _check_of(kind, full, root_kind), key=key))
            continue
        if kind in ("value_error", "assertion_error"):
            message = str(error_obj) if error_obj is not None else str(err.get("msg", ""))
            message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
            message = _redact.scrub_text(message)  # a validator may quote what it rejected
        elif kind == "literal_error":
            message = f"{_shown(inp, full)} not in {_expected_literals(ctx)}"
        elif kind in _TYPE_WORDS:
            message = f"expected {_TYPE_WORDS[kind]}, got {_describe_input(inp, full)}"
        elif kind in _BOUNDS:
            message = (f"must be {_BOUNDS[kind]} {next(iter(ctx.values()), '?')}, got "
                       f"{_shown(inp, full)}")
        elif kind == "too_short" and isinstance(inp, list | dict) and not inp:
            message = "must not be empty (list at least one entry)"
        else:
            message = f"{err.get('msg', kind)} (got {_describe_input(inp, full)})"
        line = lines.line_of(full) if lines else None
        out.append(ContractProblem(message, tuple(full), line, file,
                                   _check_of(kind, full, root_kind)))
    return out


def unique_problems(problems: Iterable[ContractProblem]) -> list[ContractProblem]:
    """Drop exact repeats (Pydantic reports some errors once per union branch)."""
    seen: set[tuple[Any, ...]] = set()
    out = []
    for p in problems:
        key = (p.message, p.path, p.line, p.file, p.severity)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out
