"""validation: input and output schema enforcement for ``process()``, plus fail-fast helpers.

What it gives a node (seed 000's ``MixinValidation``: "Input validation and schema enforcement"):

* ``_guard_validation`` / ``_guard_sync_validation`` (guard rank 35: inside logging, metrics and
  the future authentication/authorization guards, outside caching, retry, the circuit breaker
  and the rate limiter): the input of every ``process()`` call is validated before anything
  else runs, so invalid input never reaches a cache key, a retry or a rate-limit permit, and the
  value ``process()`` returns is validated on its way out.
* ``self.validator``: the :class:`Validator` facility (``validate_input``, ``validate_output``,
  ``check``, ``check_output`` and omnibase's fail-fast helpers).

Where the models come from, first match wins:

1. **Per action** (multi-action nodes, seed 002's ``actions``): with ``action_key`` set, the
   input's ``action_key`` entry names the action and ``actions[<name>]`` gives its
   ``input_model`` / ``output_model``. An action that is not declared is an input error listing
   the declared ones. A direction the action leaves ``null`` falls back to 2. and 3.
2. **Configuration**: ``input_model`` / ``output_model`` as ``"module:Name"`` (a Pydantic model
   or any type pydantic's ``TypeAdapter`` accepts). This is also how a YAML node contract's
   ``validation`` subcontract configures it. A reference that cannot be imported, or names
   something that is not a type, is a :class:`~onex_compose.ConfigurationError` at setup, with
   a did-you-mean over the module's names.
3. **Annotations** (``from_annotations: true``): ``process(self, input_data: X) -> Y``, resolved
   with ``typing.get_type_hints`` once per class. ``Any`` or no annotation means "not checked".

The input is the first positional argument of ``process()`` (or the keyword argument named like
its first parameter). With ``pass_model: true`` ``process()`` receives the validated value (a
model instance for a model), otherwise the original data once it has been validated. The
validated output is what the caller gets back (a dict returned for a model-typed output comes
back as the model). Pydantic reports every error of a value at once: :class:`InputValidationError`
lists them (up to ``max_errors``) with dotted paths (``items.3.qty``), never echoing the value of
a field whose name looks secret. An :class:`OutputValidationError` is the node's own bug: it is
logged at ERROR with the ``process`` qualname, counted as ``validations_total{direction=output,
outcome=invalid}`` and, the validation guard being outside retry, never retried.

With both directions off the guard is not in the chain at all (``setup_validation`` rebinds the
node's pipeline), so a disabled validation costs nothing per call.

Fail-fast helpers (``reference/omnibase.md`` section 6 item 12): ``require``, ``not_empty``,
``one_of``, ``dependency``, ``ensure`` and the ``@fail_fast`` decorator raise
:class:`FailFastError` with omnibase's wording and a ``code``; the library never calls
``sys.exit``.

Example:
    >>> from pydantic import BaseModel
    >>> class Order(BaseModel):
    ...     sku: str
    ...     qty: int
    >>> v = Validator(ValidationConfig())
    >>> v.check({"sku": "a", "qty": "2"}, Order)
    Order(sku='a', qty=2)
    >>> v.require(None, "sku")
    Traceback (most recent call last):
    ...
    onex_compose.capabilities.validation.FailFastError: Required field 'sku' is missing
"""

from __future__ import annotations

import functools
import importlib
import inspect
import typing
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar, cast, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from onex_compose import OnexError, coerce_config, facility
from onex_compose._redact import quote, sensitive_field
from onex_compose.exceptions import ConfigurationError, did_you_mean

__all__ = [
    "ActionModels",
    "FailFastError",
    "InputValidationError",
    "MixinValidation",
    "OutputValidationError",
    "ValidationConfig",
    "ValidationProtocol",
    "Validator",
    "fail_fast",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_IN_OK = {"direction": "input", "outcome": "ok"}
_IN_BAD = {"direction": "input", "outcome": "invalid"}
_OUT_OK = {"direction": "output", "outcome": "ok"}
_OUT_BAD = {"direction": "output", "outcome": "invalid"}
_NO_ARG: Any = object()


# ------------------------------------------------------------------------------------------------
# errors


def _path(loc: Sequence[Any]) -> str:
    return ".".join(str(part) for part in loc)


def _error_entries(exc: ValidationError, limit: int) -> tuple[list[dict[str, str]], list[str], int]:
    """``({loc, msg, type}, ...)`` and the display lines of the first ``limit`` errors."""
    raw = exc.errors(include_url=False)
    entries: list[dict[str, str]] = []
    lines: list[str] = []
    for err in raw[:limit]:
        loc = _path(err.get("loc", ()))
        entries.append({"loc": loc, "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))})
        lines.append(_line(loc, err))
    return entries, lines, len(raw)


def _line(loc: str, err: Mapping[str, Any]) -> str:
    where = loc or "(the whole value)"
    text = f"{where}: {err.get('msg', '')} [type={err.get('type', '')}"
    if "input" in err and err.get("type") != "missing":
        secret = any(sensitive_field(str(part)) for part in err.get("loc", ()) if isinstance(part, str))
        text += ", input not shown (secret-looking field)" if secret else \
            f", input={quote(err['input'], 60)}"
    return text + "]"


class _ValidationFailure(OnexError):
    """What input and output failures share: ``errors``, ``total``, ``model`` and the listing."""

    def __init__(self, headline: str, *, model: str, errors: list[dict[str, str]],
                 lines: list[str], total: int, action: str | None = None) -> None:
        self.model = model
        self.errors = errors
        self.total = total
        self.action = action
        more = total - len(errors)
        listing = "".join(f"\n  - {line}" for line in lines)
        tail = f"\n  ... and {more} more (raise validation_config.max_errors to see them)" \
            if more > 0 else ""
        count = f"{total} error{'s' if total != 1 else ''}"
        super().__init__(f"{headline} ({count}):{listing}{tail}")


class InputValidationError(_ValidationFailure, ValueError):
    """The input of a call does not match its model; the operation was never called.

    Not retriable and neutral for a circuit breaker (the dependency was never called).

    Attributes:
        errors: ``[{"loc": "items.3.qty", "msg": ..., "type": ...}, ...]``, up to ``max_errors``.
        total: how many errors pydantic found (``len(errors)`` or more).
        model: the name of the model or type validated against.
        action: the action (multi-action nodes), or ``None``.

    Example:
        >>> err = InputValidationError.single("qty", "Input should be a valid integer", "int_parsing",
        ...                                   model="Order")
        >>> err.errors, err.onex_retriable, err.onex_breaker_neutral
        ([{'loc': 'qty', 'msg': 'Input should be a valid integer', 'type': 'int_parsing'}], False, True)
    """

    onex_retriable = False
    onex_breaker_neutral = True

    @classmethod
    def single(cls, loc: str, msg: str, type_: str, *, model: str,
               action: str | None = None) -> InputValidationError:
        """An error with one entry (an undeclared action, a missing action key)."""
        return cls(f"Invalid input for {model}", model=model,
                   errors=[{"loc": loc, "msg": msg, "type": type_}],
                   lines=[f"{loc}: {msg} [type={type_}]"], total=1, action=action)


class OutputValidationError(_ValidationFailure, TypeError):
    """A value returned by ``process()`` (or checked with ``validate_output``) does not match its
    output model: the node's own bug, so never retried.

    Attributes:
        errors, total, model, action: as for :class:`InputValidationError`.
        operation: the ``process`` qualname (``None`` outside the guard).
    """

    onex_retriable = False

    def __init__(self, headline: str, *, model: str, errors: list[dict[str, str]],
                 lines: list[str], total: int, action: str | None = None,
                 operation: str | None = None) -> None:
        self.operation = operation
        super().__init__(headline, model=model, errors=errors, lines=lines, total=total,
                         action=action)


class FailFastError(OnexError, ValueError):
    """A fail-fast check failed (omnibase's validators raise instead of ``sys.exit``).

    Attributes:
        code: ``REQUIRED``, ``EMPTY``, ``NOT_ALLOWED``, ``DEPENDENCY_FAILED``,
            ``CONTRACT_VIOLATION`` or ``UNEXPECTED``.
        field: the field or dependency concerned (``None`` for a contract condition).

    Example:
        >>> err = FailFastError("Field 'x' cannot be empty", code="EMPTY", field="x")
        >>> err.code, err.field, str(err)
        ('EMPTY', 'x', "Field 'x' cannot be empty")
    """

    onex_retriable = False

    def __init__(self, message: str, *, code: str, field: str | None = None) -> None:
        self.code = code
        self.field = field
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        return self.message


def fail_fast(fn: F) -> F:
    """Decorator (omnibase's ``@fail_fast``): results pass through, a :class:`FailFastError`
    propagates unchanged, and any other exception (``SystemExit`` included) becomes
    ``FailFastError(code="UNEXPECTED")`` with the original as its cause. Never exits.

    Works on plain and ``async`` functions.

    Example:
        >>> @fail_fast
        ... def parse(x):
        ...     return int(x)
        >>> parse("2")
        2
        >>> parse("z").code
        Traceback (most recent call last):
        ...
        onex_compose.capabilities.validation.FailFastError: Unexpected error in parse: ValueError: ...
    """
    name = getattr(fn, "__qualname__", repr(fn))

    def unexpected(exc: BaseException) -> FailFastError:
        detail = quote(str(exc), 200).strip("'\"") if str(exc) else ""
        return FailFastError(f"Unexpected error in {name}: {type(exc).__name__}"
                             + (f": {detail}" if detail else ""), code="UNEXPECTED")

    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def guarded_async(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except FailFastError:
                raise
            except (Exception, SystemExit) as exc:
                raise unexpected(exc) from exc

        return cast(F, guarded_async)

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FailFastError:
            raise
        except (Exception, SystemExit) as exc:
            raise unexpected(exc) from exc

    return cast(F, guarded)


# ------------------------------------------------------------------------------------------------
# configuration


class ActionModels(BaseModel):
    """The models of one action (``validation_config.actions.<name>``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_model: str | None = Field(default=None, description='"module:Name" of the input')
    output_model: str | None = Field(default=None, description='"module:Name" of the output')


class ValidationConfig(BaseModel):
    """The validation subcontract (every key of ``validation_config`` in ``mixin_validation.yaml``).

    Example:
        >>> ValidationConfig(strict=True).max_errors
        20
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_model: str | None = Field(
        default=None, description='"module:Name" of a Pydantic model (or any type TypeAdapter '
                                  "accepts) for process()'s input")
    output_model: str | None = Field(
        default=None, description='"module:Name" of the type process() must return')
    from_annotations: bool = Field(
        default=True, description="with no model configured, use process()'s annotations "
                                  "(Any or missing: not checked)")
    validate_input: bool = Field(default=True, description="validate process()'s input")
    validate_output: bool = Field(default=True, description="validate process()'s result")
    strict: bool = Field(default=False, description='pydantic strict mode (no "1" -> 1)')
    pass_model: bool = Field(
        default=True, description="process() receives the validated value (else the original "
                                  "data, once validated)")
    max_errors: int = Field(default=20, ge=1, le=10_000, description="errors listed per failure")
    action_key: str | None = Field(
        default=None, min_length=1,
        description="multi-action nodes: the input key naming the action (seed 002 actions)")
    actions: dict[str, ActionModels] = Field(
        default_factory=dict, description="{action: {input_model, output_model}}")


@runtime_checkable
class ValidationProtocol(Protocol):
    """What ``self.validator`` offers (the contract's actions)."""

    def validate_input(self, data: Any) -> Any: ...

    def validate_output(self, value: Any, *, action: str | None = None) -> Any: ...

    def check(self, value: Any, type_: Any) -> Any: ...


# ------------------------------------------------------------------------------------------------
# models


class _Schema:
    """One type to validate against: the pydantic validator, called directly (no wrapper)."""

    __slots__ = ("name", "type", "validate")

    def __init__(self, type_: Any, strict: bool) -> None:
        self.type = type_
        self.name = getattr(type_, "__qualname__", None) or repr(type_)
        if isinstance(type_, type) and issubclass(type_, BaseModel):
            validator = type_.__pydantic_validator__
        else:
            validator = TypeAdapter(type_).validator
        plain = validator.validate_python
        self.validate: Callable[[Any], Any] = (
            functools.partial(plain, strict=True) if strict else plain)


def _is_type(obj: Any) -> bool:
    return isinstance(obj, type) or typing.get_origin(obj) is not None


def _import_ref(ref: str, field: str) -> Any:
    """The type a ``"module:Name"`` reference names (``ConfigurationError`` otherwise)."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(
            f"validation_config.{field}: {ref!r} is not a model reference; write "
            '"package.module:ModelName"', capability="validation")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"validation_config.{field}: cannot import module {module_name!r} of {ref!r} "
            f"({type(exc).__name__}: {exc}){_module_hint(module_name)}; check the module path "
            "and that it is importable", capability="validation") from exc
    obj: Any = module
    for i, part in enumerate(attr.split(".")):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            names = [n for n in dir(obj) if not n.startswith("_")]
            where = module_name if i == 0 else f"{module_name}:{'.'.join(attr.split('.')[:i])}"
            raise ConfigurationError(
                f"validation_config.{field}: {where} has no attribute {part!r}"
                f"{did_you_mean(part, names)}", capability="validation") from None
    if not _is_type(obj):
        raise ConfigurationError(
            f"validation_config.{field}: {ref!r} is a {type(obj).__name__}, not a type; name a "
            "Pydantic model (or any type pydantic's TypeAdapter accepts)", capability="validation")
    return obj


def _module_hint(module_name: str) -> str:
    """A did-you-mean over the modules next to the one that failed to import (only on error)."""
    import pkgutil

    parent, _, leaf = module_name.rpartition(".")
    try:
        path = importlib.import_module(parent).__path__ if parent else None
        names = [m.name for m in pkgutil.iter_modules(path)]
    except Exception:  # the parent itself is missing, or is not a package
        return ""
    return did_you_mean(leaf, names)


def _schema_for(type_: Any, strict: bool, where: str) -> _Schema:
    try:
        return _Schema(type_, strict)
    except Exception as exc:  # PydanticSchemaGenerationError, PydanticUserError, ...
        raise ConfigurationError(
            f"validation_config.{where}: pydantic cannot validate {type_!r} "
            f"({type(exc).__name__}); use a Pydantic model or a type TypeAdapter accepts (for "
            "an annotation of process() that is not meant to be validated, set "
            "from_annotations: false or configure input_model/output_model)",
            capability="validation") from exc


class _Signature:
    """What the annotations of one class's ``process()`` say (resolved once per class)."""

    __slots__ = ("input", "output", "param", "qualname")

    def __init__(self, input_: Any, output: Any, param: str | None, qualname: str) -> None:
        self.input, self.output, self.param, self.qualname = input_, output, param, qualname


_signatures: weakref.WeakKeyDictionary[type, _Signature] = weakref.WeakKeyDictionary()


def _checked(hint: Any) -> Any:
    return None if hint is None or hint is Any or hint is inspect.Parameter.empty else hint


def _signature_of(cls: type) -> _Signature:
    """The input/output annotations of ``cls``'s most-derived ``process`` (cached per class)."""
    try:
        return _signatures[cls]
    except KeyError:
        pass
    process = getattr(cls, "process", None)
    raw = getattr(process, "__onex_raw__", process)
    if raw is None or not callable(raw):
        sig = _Signature(None, None, None, f"{cls.__qualname__}.process")
    else:
        qualname = getattr(raw, "__qualname__", f"{cls.__qualname__}.process")
        try:
            hints = typing.get_type_hints(raw, include_extras=True)
        except Exception as exc:  # NameError of an unresolvable forward reference, ...
            raise ConfigurationError(
                f"validation: cannot resolve the annotations of {qualname} "
                f"({type(exc).__name__}: {exc}); import the annotated types at module level, "
                "configure validation_config.input_model/output_model, or set "
                "from_annotations: false", capability="validation") from exc
        params = [p for p in inspect.signature(raw).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        first = params[1] if len(params) > 1 else None  # params[0] is self
        sig = _Signature(_checked(hints.get(first.name)) if first is not None else None,
                         _checked(hints.get("return")), first.name if first else None, qualname)
    _signatures[cls] = sig
    return sig


# ------------------------------------------------------------------------------------------------
# the facility


class _Plan:
    """The resolved schemas of one direction set: what the guard runs per call."""

    __slots__ = ("actions", "input", "output", "pass_model")

    def __init__(self, input_: _Schema | None, output: _Schema | None, pass_model: bool,
                 actions: dict[str, tuple[_Schema | None, _Schema | None]] | None) -> None:
        self.input, self.output, self.pass_model, self.actions = input_, output, pass_model, actions


class Validator:
    """Input/output schema enforcement and fail-fast helpers (``self.validator``).

    Args:
        config: the validation configuration.
        metrics: the node's metrics facility (``validations_total``), or ``None``.
        owner: the node class, whose ``process()`` annotations supply the models when none is
            configured (``from_annotations``).
        log: a callable returning the logger for output errors (default: the library logger).

    Raises:
        ConfigurationError: a model reference cannot be imported or is not a type, or the
            annotations of ``owner.process`` cannot be resolved.
    """

    def __init__(self, config: ValidationConfig | None = None, *, metrics: Any = None,
                 owner: type | None = None, log: Callable[[], Any] | None = None) -> None:
        cfg = config if config is not None else ValidationConfig()
        self.config = cfg
        self.metrics = metrics
        self._log = log
        self._adapters: dict[Any, _Schema] = {}
        strict = cfg.strict
        sig = _signature_of(owner) if owner is not None and cfg.from_annotations else None
        self.operation = sig.qualname if sig is not None else (
            f"{owner.__qualname__}.process" if owner is not None else "process")
        self.param = sig.param if sig is not None else None

        def resolve(ref: str | None, hint: Any, where: str) -> _Schema | None:
            if ref is not None:
                return _schema_for(_import_ref(ref, where), strict, where)
            if hint is not None:
                return _schema_for(hint, strict, where)
            return None

        self.input_schema = resolve(cfg.input_model, sig.input if sig else None, "input_model")
        self.output_schema = resolve(cfg.output_model, sig.output if sig else None,
                                     "output_model")
        self.action_schemas: dict[str, tuple[_Schema | None, _Schema | None]] = {
            name: (resolve(models.input_model, None, f"actions.{name}.input_model")
                   or self.input_schema,
                   resolve(models.output_model, None, f"actions.{name}.output_model")
                   or self.output_schema)
            for name, models in cfg.actions.items()}
        checks_in = cfg.validate_input and (self.input_schema is not None
                                            or cfg.action_key is not None)
        checks_out = cfg.validate_output and (self.output_schema is not None or any(
            out is not None for _in, out in self.action_schemas.values()))
        #: what the guard does per call; ``None``: nothing to check (the guard steps aside)
        self.plan: _Plan | None = None
        if checks_in or checks_out:
            self.plan = _Plan(
                self.input_schema if cfg.validate_input else None,
                self.output_schema if cfg.validate_output else None, cfg.pass_model,
                None if cfg.action_key is None else {
                    name: (i if cfg.validate_input else None, o if cfg.validate_output else None)
                    for name, (i, o) in self.action_schemas.items()})

    def __repr__(self) -> str:
        def name(s: _Schema | None) -> str:
            return s.name if s is not None else "-"

        return (f"<Validator input={name(self.input_schema)} output={name(self.output_schema)}"
                f" actions={sorted(self.action_schemas)}>")

    # -- the checks ---------------------------------------------------------------------------

    def _count(self, labels: Mapping[str, str]) -> None:
        metrics = self.metrics
        if metrics is not None:
            metrics.increment("validations_total", labels=labels)

    def action_of(self, data: Any) -> str:
        """The action named by ``data[action_key]`` (an :class:`InputValidationError` when it
        is missing or not declared)."""
        key = cast(str, self.config.action_key)
        declared = sorted(self.action_schemas)
        action = (data.get(key, _NO_ARG) if isinstance(data, Mapping)
                  else getattr(data, key, _NO_ARG))
        if action is _NO_ARG:
            self._count(_IN_BAD)
            raise InputValidationError.single(
                key, f"the action key is missing; declared actions: {declared}", "missing_action",
                model=f"{self.operation} input")
        if not isinstance(action, str) or action not in self.action_schemas:
            self._count(_IN_BAD)
            shown = quote(action, 60)
            raise InputValidationError.single(
                key, f"undeclared action {shown}{did_you_mean(action, declared)}; declared "
                     f"actions: {declared}", "undeclared_action",
                model=f"{self.operation} input", action=action if isinstance(action, str) else None)
        return action

    def _input_failure(self, exc: ValidationError, schema: _Schema,
                       action: str | None) -> InputValidationError:
        entries, lines, total = _error_entries(exc, self.config.max_errors)
        what = f"action {action!r} of " if action else ""
        return InputValidationError(
            f"Invalid input for {what}{self.operation} (model {schema.name})", model=schema.name,
            errors=entries, lines=lines, total=total, action=action)

    def _output_failure(self, exc: ValidationError, schema: _Schema, action: str | None,
                        *, log: bool) -> OutputValidationError:
        entries, lines, total = _error_entries(exc, self.config.max_errors)
        what = f" for action {action!r}" if action else ""
        err = OutputValidationError(
            f"{self.operation} returned a value that does not match its output model "
            f"{schema.name}{what}: a bug in the node, not in the caller", model=schema.name,
            errors=entries, lines=lines, total=total, action=action, operation=self.operation)
        if log:
            self._logger().error("validation: {}", str(err))
        return err

    def _logger(self) -> Any:
        if self._log is not None:
            return self._log()
        from onex_compose.capabilities._log import logger

        return logger.bind(capability="validation")

    def validate_input(self, data: Any) -> Any:
        """Validate ``data`` against the input model (the action's, on a multi-action node).

        Returns:
            The validated value (a model instance for a model); ``data`` itself when no input
            model applies.

        Raises:
            InputValidationError: every error found (up to ``max_errors``), with paths.
        """
        schema = self.input_schema
        action = None
        if self.config.action_key is not None:
            action = self.action_of(data)
            schema = self.action_schemas[action][0]
        if schema is None:
            return data
        try:
            value = schema.validate(data)
        except ValidationError as exc:
            self._count(_IN_BAD)
            raise self._input_failure(exc, schema, action) from None
        self._count(_IN_OK)
        return value

    def validate_output(self, value: Any, *, action: str | None = None) -> Any:
        """Validate ``value`` against the output model (``action``'s, when given).

        Raises:
            OutputValidationError: every error found (up to ``max_errors``), with paths.
            KeyError: ``action`` is not declared (the message lists the declared ones).
        """
        if action is not None and action not in self.action_schemas:
            declared = sorted(self.action_schemas)
            raise KeyError(f"validate_output: undeclared action {action!r}"
                           f"{did_you_mean(action, declared)}; declared actions: {declared}")
        schema = self.output_schema if action is None else self.action_schemas[action][1]
        if schema is None:
            return value
        try:
            result = schema.validate(value)
        except ValidationError as exc:
            self._count(_OUT_BAD)
            raise self._output_failure(exc, schema, action, log=False) from None
        self._count(_OUT_OK)
        return result

    def check(self, value: Any, type_: Any) -> Any:
        """Validate ``value`` against any type (ad hoc; the adapter is cached per type).

        Raises:
            InputValidationError: ``value`` does not match ``type_``.
        """
        schema = self._adhoc(type_)
        try:
            return schema.validate(value)
        except ValidationError as exc:
            raise self._input_failure(exc, schema, None) from None

    def _adhoc(self, type_: Any) -> _Schema:
        try:
            return self._adapters[type_]
        except KeyError:
            schema = _schema_for(type_, self.config.strict, "check")
            if len(self._adapters) < 256:
                self._adapters[type_] = schema
            return schema
        except TypeError:  # unhashable annotation
            return _schema_for(type_, self.config.strict, "check")

    def check_output(self, capability: str, model_name: str, value: Any) -> Any:
        """Validate ``value`` against a capability's seed 002 output model.

        Example: ``check_output("error_handling", "error_handling_result", value)``.

        Raises:
            OutputValidationError: ``value`` does not match the model.
            UnknownCapabilityError / UnknownOutputModelError: no such capability, or its
                contract declares no such output model (both ``LookupError``, with a
                did-you-mean).
        """
        from onex_compose.capabilities._output_models import output_model

        model = output_model(capability, model_name)
        schema = self._adhoc(model)
        try:
            return schema.validate(value)
        except ValidationError as exc:
            entries, lines, total = _error_entries(exc, self.config.max_errors)
            raise OutputValidationError(
                f"Value does not match {capability}'s output model {model_name!r}",
                model=model_name, errors=entries, lines=lines, total=total) from None

    # -- fail-fast helpers (omnibase, reference/omnibase.md section 6 item 12) -----------------

    @staticmethod
    def require(value: T, field: str) -> T:
        """``None`` -> ``FailFastError("Required field 'x' is missing", code="REQUIRED")``."""
        if value is None:
            raise FailFastError(f"Required field '{field}' is missing", code="REQUIRED",
                                field=field)
        return value

    @staticmethod
    def not_empty(value: T, field: str) -> T:
        """``""``, ``[]``, ``{}`` (any empty sized value) or ``None`` ->
        ``FailFastError("Field 'x' cannot be empty", code="EMPTY")``."""
        empty = value is None
        if not empty:
            try:
                empty = len(value) == 0  # type: ignore[arg-type]
            except TypeError:
                empty = False
        if empty:
            raise FailFastError(f"Field '{field}' cannot be empty", code="EMPTY", field=field)
        return value

    @staticmethod
    def one_of(value: T, allowed: Sequence[Any], field: str) -> T:
        """``value`` not in ``allowed`` ->
        ``FailFastError("Field 'x' must be one of ['a', 'b'] got 'v'", code="NOT_ALLOWED")``
        (the value is not echoed for a secret-looking field name)."""
        if value not in allowed:
            shown = "'***'" if sensitive_field(field) else repr(value)
            raise FailFastError(f"Field '{field}' must be one of {list(allowed)!r} got {shown}",
                                code="NOT_ALLOWED", field=field)
        return value

    @staticmethod
    async def dependency(check: Any, name: str) -> None:
        """Run ``check`` (a callable, sync or async, or an awaitable, or a plain value): a
        falsy result or an exception -> ``FailFastError(code="DEPENDENCY_FAILED")`` (the
        exception is kept as the cause)."""
        try:
            result = check() if callable(check) else check
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            raise FailFastError(
                f"Dependency '{name}' check failed: {type(exc).__name__}: "
                f"{quote(str(exc), 120).strip(chr(39) + chr(34))}", code="DEPENDENCY_FAILED",
                field=name) from exc
        if not result:
            raise FailFastError(f"Dependency '{name}' is unavailable", code="DEPENDENCY_FAILED",
                                field=name)

    @staticmethod
    def ensure(condition: Any, message: str) -> None:
        """A falsy ``condition`` -> ``FailFastError(message, code="CONTRACT_VIOLATION")``."""
        if not condition:
            raise FailFastError(message, code="CONTRACT_VIOLATION")

    fail_fast = staticmethod(fail_fast)


# ------------------------------------------------------------------------------------------------
# the mixin


class MixinValidation:
    """Input validation and schema enforcement: ``self.validator`` and a ``process()`` guard.

    Requires ``metrics`` (``validations_total``); logs output errors through the ``logging``
    capability's node logger when it is composed.

    Example:
        >>> from pydantic import BaseModel
        >>> from onex_compose import NodeCompute, compose
        >>> class Order(BaseModel):
        ...     qty: int
        >>> class Orders(NodeCompute):
        ...     def process(self, order: Order) -> int:
        ...         return order.qty * 2
        >>> node = compose(Orders, ["validation"])()
        >>> node.process({"qty": "21"})
        42
    """

    __onex_capability__ = "validation"
    __slots__ = ()

    def setup_validation(self, config: ValidationConfig | Mapping[str, Any] | None = None
                         ) -> None:
        """Resolve the models (config, annotations, actions) and build ``self.validator``.

        Raises:
            ConfigurationError: an unimportable model reference or one that is not a type (with
                a did-you-mean), or unresolvable ``process()`` annotations.
        """
        cfg = coerce_config(ValidationConfig, config, "validation")
        node = cast(Any, self)
        node.validator = _build(node, cfg)
        node._onex_chain = None  # the guard rebinds (or steps aside) on the next call

    @facility
    def validator(self) -> Validator:
        """The node's validator (default config when setup never ran)."""
        return _build(cast(Any, self), ValidationConfig())

    def _guard_validation(self, call: Callable[..., Awaitable[T]]
                          ) -> Callable[..., Awaitable[T]]:
        """Wrap ``process()``: validate its input before and its result after (guard rank 35).

        Built per instance on the first call; with nothing to check it returns ``call`` itself
        (``setup_validation`` rebinds the chain, so turning a direction back on takes effect).
        A validator assigned directly is followed through one identity check per call.
        """
        node = cast(Any, self)
        validator: Validator = node.validator
        if validator.plan is None:
            return call
        check_in, check_out, fast = _checks(node, validator)

        if fast is not None:  # one model per direction, no actions: the inlined path
            validate_in, count_in, validate_out, count_out, pass_model, fail_in, fail_out = fast

            @functools.wraps(call)
            async def validated_fast(*args: Any, **kwargs: Any) -> T:
                if node.validator is not validator:
                    return await _rebound(node, call, args, kwargs)
                if args and validate_in is not None:
                    try:
                        value = validate_in(args[0])
                    except ValidationError as exc:
                        raise fail_in(exc) from None
                    count_in()
                    if pass_model:
                        args = (value, *args[1:]) if len(args) > 1 else (value,)
                elif validate_in is not None:
                    args, kwargs, _ = check_in(args, kwargs)
                result = await call(*args, **kwargs)
                if validate_out is None:
                    return result
                try:
                    result = validate_out(result)
                except ValidationError as exc:
                    raise fail_out(exc) from None
                count_out()
                return cast(T, result)

            return validated_fast

        @functools.wraps(call)
        async def validated(*args: Any, **kwargs: Any) -> T:
            if node.validator is not validator:
                return await _rebound(node, call, args, kwargs)
            args, kwargs, action = check_in(args, kwargs)
            return cast(T, check_out(await call(*args, **kwargs), action))

        return validated

    def _guard_sync_validation(self, call: Callable[..., T]) -> Callable[..., T]:
        """The sync twin of :meth:`_guard_validation` for a plain ``def process``."""
        node = cast(Any, self)
        validator: Validator = node.validator
        if validator.plan is None:
            return call
        check_in, check_out, fast = _checks(node, validator)

        def rebound(args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
            node._onex_chain = None
            return MixinValidation._guard_sync_validation(node, call)(*args, **kwargs)

        if fast is not None:
            validate_in, count_in, validate_out, count_out, pass_model, fail_in, fail_out = fast

            @functools.wraps(call)
            def validated_sync_fast(*args: Any, **kwargs: Any) -> T:
                if node.validator is not validator:
                    return rebound(args, kwargs)
                if args and validate_in is not None:
                    try:
                        value = validate_in(args[0])
                    except ValidationError as exc:
                        raise fail_in(exc) from None
                    count_in()
                    if pass_model:
                        args = (value, *args[1:]) if len(args) > 1 else (value,)
                elif validate_in is not None:
                    args, kwargs, _ = check_in(args, kwargs)
                result = call(*args, **kwargs)
                if validate_out is None:
                    return result
                try:
                    result = validate_out(result)
                except ValidationError as exc:
                    raise fail_out(exc) from None
                count_out()
                return result

            return validated_sync_fast

        @functools.wraps(call)
        def validated_sync(*args: Any, **kwargs: Any) -> T:
            if node.validator is not validator:
                return rebound(args, kwargs)
            args, kwargs, action = check_in(args, kwargs)
            return cast(T, check_out(call(*args, **kwargs), action))

        return validated_sync


async def _rebound(node: Any, call: Callable[..., Awaitable[Any]], args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> Any:
    """The validator was replaced by assignment: rebuild this link (and the node's chain)."""
    node._onex_chain = None
    return await MixinValidation._guard_validation(node, call)(*args, **kwargs)


def _build(node: Any, cfg: ValidationConfig) -> Validator:
    from onex_compose import has_capability

    metrics = node.metrics if has_capability(node, "metrics") else None

    def log() -> Any:
        from onex_compose.capabilities.logging import bind_logger

        return bind_logger(node, "validation")

    return Validator(cfg, metrics=metrics, owner=type(node), log=log)


def _checks(node: Any, v: Validator) -> tuple[Any, Any, Any]:
    """The guard's per-call steps for validator ``v``: ``(check_in, check_out, fast)``, where
    ``fast`` holds what the inlined path needs when the node has no actions (else ``None``)."""
    plan = cast(_Plan, v.plan)
    param = v.param
    actions = plan.actions
    pass_model = plan.pass_model
    in_schema, out_schema = plan.input, plan.output
    count = v._count

    def check_in(args: tuple[Any, ...], kwargs: dict[str, Any]
                 ) -> tuple[tuple[Any, ...], dict[str, Any], str | None]:
        if args:
            data = args[0]
        elif param is not None and param in kwargs:
            data = kwargs[param]
        else:
            return args, kwargs, None  # no input: process() itself reports the missing argument
        action = None
        schema = in_schema
        if actions is not None:
            action = v.action_of(data)
            schema = actions[action][0]
        if schema is not None:
            try:
                value = schema.validate(data)
            except ValidationError as exc:
                count(_IN_BAD)
                raise v._input_failure(exc, schema, action) from None
            count(_IN_OK)
            if pass_model:
                if args:
                    args = (value, *args[1:])
                else:
                    kwargs = {**kwargs, cast(str, param): value}
        return args, kwargs, action

    def check_out(result: Any, action: str | None) -> Any:
        schema = out_schema if action is None else cast(dict[str, Any], actions)[action][1]
        if schema is None:
            return result
        try:
            value = schema.validate(result)
        except ValidationError as exc:
            count(_OUT_BAD)
            raise v._output_failure(exc, schema, action, log=True) from None
        count(_OUT_OK)
        return value

    fast = None
    if actions is None:
        def fail_in(exc: ValidationError) -> InputValidationError:
            count(_IN_BAD)
            return v._input_failure(exc, cast(_Schema, in_schema), None)

        def fail_out(exc: ValidationError) -> OutputValidationError:
            count(_OUT_BAD)
            return v._output_failure(exc, cast(_Schema, out_schema), None, log=True)

        fast = (None if in_schema is None else in_schema.validate,
                _counter(v.metrics, _IN_OK),
                None if out_schema is None else out_schema.validate,
                _counter(v.metrics, _OUT_OK), pass_model, fail_in, fail_out)
    return check_in, check_out, fast


def _counter(metrics: Any, labels: Mapping[str, str]) -> Callable[[], None]:
    """A cheap ``metrics.increment("validations_total", labels=labels)`` for the guard's hot path.

    The public ``increment`` builds the series key from the labels dict on every call (about
    0.3 µs, the whole per-call budget of this guard); the metrics facility's
    :meth:`~onex_compose.capabilities.metrics.Metrics.bind_counter` resolves it once and stays
    correct across ``reset()``, a reconfiguration and the prometheus mirror. Another facility
    without ``bind_counter`` is called through ``increment``.
    """
    if metrics is None:
        return _nothing
    bind = getattr(metrics, "bind_counter", None)
    if bind is not None:
        return cast(Callable[[], None], bind("validations_total", labels=labels))

    def inc() -> None:
        metrics.increment("validations_total", labels=labels)

    return inc


def _nothing() -> None:
    return None
