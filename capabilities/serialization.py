"""serialization: one API for JSON, MessagePack and YAML, typed round trips, canonical JSON.

``node.serializer`` turns data into bytes and back:

* ``dumps(obj, format=None) -> bytes`` and ``loads(data, type_=None, format=None)`` for the
  formats ``json`` (orjson when installed, else the standard library; ``json_library``),
  ``msgpack`` (msgspec, else msgpack; ``msgpack_library``), ``yaml`` (safe: written with
  ``yaml.safe_dump``, read through the engine's hardened loader in ``onex_compose._loading``
  with its alias, node and depth caps; never ``yaml.load``) and, only when ``allow_pickle`` is
  true, ``pickle`` (it runs code from the data it loads: only for data from trusted processes,
  the same warning as caching's ``serializer: pickle``). ``register_format(name, dumps, loads)``
  adds a format.
* With ``type_`` (anything pydantic's ``TypeAdapter`` takes), the decoded data is validated into
  it, so values round-trip exactly: aware ``datetime`` (ISO 8601 with its offset; in msgpack
  its Timestamp extension, the same instant in UTC), ``date``, ``time``, ``timedelta`` (ISO 8601 duration), ``UUID``, ``Decimal`` (a string, exact), ``Enum``
  (its value), ``bytes`` (URL-safe base64 in the text formats, native bin in msgpack), sets and
  tuples (lists), Pydantic models (``model_dump(mode="json")`` / validation: a model's own config
  governs its fields, e.g. ``ser_json_bytes``), dataclasses, TypedDicts and ``list[Model]``.
  The ``TypeAdapter`` is built once per type and cached. Without ``type_``, plain data comes back.
* ``canonical(obj) -> bytes`` is RFC 8785 (JCS) canonical JSON, for hashes and signatures
  (audit_log, webhook): UTF-8, object keys sorted by their UTF-16 code units (RFC 8785 section
  3.2.3; the same as code-point order except above U+FFFF), no whitespace, numbers in
  ECMAScript's shortest round-trip form (``1e21`` -> ``1e+21``, ``-0`` -> ``0``). NaN,
  infinities and integers beyond +-2**53 are refused. The bytes are the same whichever JSON
  library is installed: the structure and the numbers are written here and both libraries
  escape strings identically (RFC 8785's rules).
* ``output_model(capability, name)`` builds a Pydantic model from a contract's seed 002
  ``output_models`` entry (:mod:`onex_compose.capabilities._output_models`).

Limits, the same in every format: ``max_size`` bytes on what ``dumps`` produces and on what
``loads`` accepts (:class:`PayloadTooLargeError`); ``max_depth`` levels of nesting on ``loads``
(JSON is measured before it is parsed, so 10,000 nested ``[`` is refused by the limit, never a
``RecursionError``). ``dumps`` refuses NaN and infinities (orjson would write ``null``, the
standard library ``NaN``: neither round-trips), integers outside the signed 64-bit range (never
silently a float) and naive datetimes (``naive_datetimes: utc`` treats them as UTC instead),
each error naming the path of the value (``$.items[3].conn: cannot serialize a socket.socket``).

Cost: the JSON path calls orjson once and only walks the data itself when orjson could not
(an unsupported type, an integer past 2**53, a ``null`` in the output that might be a NaN);
``benchmarks/bench_serialization.py`` compares every path with the library underneath.

Example:
    >>> s = Serializer()
    >>> s.dumps({"b": 1, "a": [True, None]})
    b'{"b":1,"a":[true,null]}'
    >>> s.canonical({"b": 1, "a": [1e21, -0.0, 333333333.33333329]})
    b'{"a":[1e+21,0,333333333.3333333],"b":1}'
    >>> from datetime import datetime, timezone
    >>> s.loads(s.dumps(datetime(2026, 1, 2, tzinfo=timezone.utc), format="msgpack"),
    ...         type_=datetime, format="msgpack")
    datetime.datetime(2026, 1, 2, 0, 0, tzinfo=TzInfo(0))
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import enum
import importlib.util
import json
import math
import pickle
import re
import threading
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from onex_compose import coerce_config, facility
from onex_compose.exceptions import ConfigurationError, OnexError, did_you_mean

if TYPE_CHECKING:
    from onex_compose._registry import Registry

__all__ = [
    "DeserializationError",
    "MixinSerialization",
    "PayloadTooLargeError",
    "SerializationConfig",
    "SerializationError",
    "SerializationProtocol",
    "Serializer",
]

_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_JS_SAFE = 2**53
_EXCERPT = 40
PICKLE_WARNING = ("pickle runs code from the data it loads: use the 'pickle' format only for data "
                  "that only trusted processes can write, else keep json/msgpack/yaml")


# ------------------------------------------------------------------------------------------------
# errors


class SerializationError(OnexError, ValueError):
    """A value could not be serialized (or deserialized: see the subclasses).

    Not retriable (the same input fails the same way) and neutral for a circuit breaker (no
    dependency was called).

    Attributes:
        format: the format concerned (``"json"``, ``"msgpack"``, ...).
        path: where in the value the problem is (``"$.items[3].conn"``), or ``None``.
        kind: ``encode``, ``decode``, ``too_large`` or ``depth`` (the metric's label).
    """

    onex_retriable = False
    onex_breaker_neutral = True

    def __init__(self, message: str, *, format: str | None = None, path: Any | None = None,
                 kind: str = "encode") -> None:
        self.format = format
        self.path = path
        self.kind = kind
        super().__init__(message)


class DeserializationError(SerializationError):
    """Input that could not be decoded: malformed, too deeply nested, or not of ``type_``.

    The message gives the format, the position (byte offset, line and column when known) and
    at most 40 escaped characters of the input around it.

    Attributes:
        position: byte offset of the problem in the input, or ``None``.
        line, column: 1-based, when known.
        errors: for a ``type_`` mismatch, pydantic's ``{loc, msg, type}`` list.
    """

    def __init__(self, message: str, *, format: str | None = None, kind: str = "decode",
                 position: int | None = None, line: int | None = None,
                 column: int | None = None, errors: list[dict[str, Any]] | None = None,
                 path: Any | None = None) -> None:
        self.position = position
        self.line = line
        self.column = column
        self.errors = errors or []
        super().__init__(message, format=format, path=path, kind=kind)


class PayloadTooLargeError(SerializationError):
    """Output of ``dumps`` or input of ``loads`` larger than ``max_size``.

    Attributes:
        size: the size in bytes.
        limit: ``max_size``.
        direction: ``out`` (dumps) or ``in`` (loads).
    """

    def __init__(self, size: int, limit: int, *, format: str, direction: str) -> None:
        self.size = size
        self.limit = limit
        self.direction = direction
        what = "serialized output" if direction == "out" else "input"
        super().__init__(
            f"{format} {what} is {size} bytes, more than max_size={limit}; raise "
            "serialization.max_size or send less data", format=format, kind="too_large")


# ------------------------------------------------------------------------------------------------
# config


class SerializationConfig(BaseModel):
    """The ``serialization`` subcontract (every key of ``serialization_config``).

    Attributes:
        default_format: format of ``dumps``/``loads`` when none is given.
        json_library: ``auto`` (orjson if importable), ``orjson`` or ``stdlib``.
        msgpack_library: ``auto`` (msgspec, else msgpack), ``msgspec`` or ``msgpack``.
        max_size: bytes, enforced on what ``dumps`` writes and what ``loads`` reads.
        max_depth: nesting limit on ``loads`` (JSON, YAML, msgpack).
        naive_datetimes: ``reject`` (an error naming the path) or ``utc`` (treated as UTC).
        decimal_as: ``string`` (exact) or ``float``.
        allow_pickle: register the ``pickle`` format (trusted data only).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    default_format: Literal["json", "msgpack", "yaml"] = "json"
    json_library: Literal["auto", "orjson", "stdlib"] = "auto"
    msgpack_library: Literal["auto", "msgspec", "msgpack"] = "auto"
    max_size: int = Field(default=16_777_216, ge=1)
    max_depth: int = Field(default=64, ge=1, le=10_000)
    naive_datetimes: Literal["reject", "utc"] = "reject"
    decimal_as: Literal["string", "float"] = "string"
    allow_pickle: bool = False


# ------------------------------------------------------------------------------------------------
# paths, excerpts


def _render_path(path: Any) -> str:
    """``"$.items[3].conn"`` from the walk's lazy path: ``"$"`` or ``(parent, key, is_index)``."""
    parts: list[str] = []
    while isinstance(path, tuple):
        path, key, is_index = path
        if is_index:
            parts.append(f"[{key}]")
        elif isinstance(key, str) and key.isidentifier():
            parts.append(f".{key}")
        else:
            parts.append(f"[{key!r}]")
    return str(path) + "".join(reversed(parts))


def _excerpt(data: bytes | str, position: int | None) -> str:
    """At most 40 characters of the input around ``position``, escaped (never raw bytes)."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    start = 0 if position is None else max(0, min(position, len(data)) - _EXCERPT // 2)
    chunk = bytes(data[start:start + _EXCERPT])
    text = chunk.decode("utf-8", "backslashreplace")
    text = text.encode("unicode_escape").decode("ascii")
    if len(text) > _EXCERPT:
        text = text[:_EXCERPT]
    return text


def _type_name(obj: Any) -> str:
    cls = type(obj)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


# ------------------------------------------------------------------------------------------------
# the value walk: plain data with paths (the slow path, and the one YAML/msgpack/canonical use)


_NATIVE = (str, int, float, bool, type(None))


class _Plain:
    """Converts a value to plain data for one mode, raising with the path of a bad value.

    Modes: ``text`` (JSON, YAML: bytes become base64), ``binary`` (msgpack: bytes stay),
    ``canonical`` (text, and integers limited to +-2**53, sets sorted), ``pickle`` (checks
    only: any other object passes through).
    """

    __slots__ = ("decimal_as", "fmt", "mode", "naive_utc")

    def __init__(self, mode: str, fmt: str, *, naive_utc: bool, decimal_as: str) -> None:
        self.mode = mode
        self.fmt = fmt
        self.naive_utc = naive_utc
        self.decimal_as = decimal_as

    def fail(self, path: Any, what: str) -> SerializationError:
        text = _render_path(path)
        return SerializationError(f"{text}: {what}", format=self.fmt, path=text)

    def convert(self, obj: Any, path: Any = "$") -> Any:
        try:
            return self._value(obj, path)
        except RecursionError:
            raise self.fail(path, "nesting too deep to serialize") from None

    def _finite(self, obj: Any, path: Any) -> None:
        _finite_floats(self, obj, path)

    def _int(self, obj: int, path: Any) -> int:
        if self.mode == "canonical":
            if -_JS_SAFE <= obj <= _JS_SAFE:
                return int(obj)
            raise self.fail(path, f"integer {obj} is beyond +-2**53, which canonical JSON "
                                  "(RFC 8785) cannot represent exactly; send it as a string")
        if _I64_MIN <= obj <= _I64_MAX:
            return int(obj)
        raise self.fail(path, f"integer {obj} is outside the signed 64-bit range; send it as "
                              "a string (or a Decimal)")

    def _float(self, obj: float, path: Any) -> float:
        if math.isfinite(obj):
            return float(obj)
        raise self.fail(path, f"cannot serialize {obj!r}: NaN and infinities do not round-trip "
                              "(JSON has no literal for them)")

    def _key(self, key: Any, path: Any) -> str:
        if type(key) is str:
            return key  # type: ignore[no-any-return]
        if isinstance(key, str):
            return str(key)
        if isinstance(key, enum.Enum):
            return self._key(key.value, path)
        if isinstance(key, bool) or key is None:
            return json.dumps(key)
        if isinstance(key, int):
            return str(self._int(key, path))
        if isinstance(key, float):
            return repr(self._float(key, path))
        if isinstance(key, uuid.UUID | _dt.date | _dt.time | Decimal):
            converted = self._value(key, path)
            return str(converted)
        raise self.fail(path, f"cannot use a {_type_name(key)} as a mapping key (keys are "
                              "strings, numbers, booleans or None)")

    def _value(self, obj: Any, path: Any) -> Any:
        cls = type(obj)
        if cls is str or obj is None or cls is bool:
            return obj
        if cls is int:
            return self._int(obj, path)
        if cls is float:
            return self._float(obj, path)
        if cls is dict:
            return {self._key(k, path): self._value(v, (path, k, False)) for k, v in obj.items()}
        if cls is list or cls is tuple:
            return [self._value(v, (path, i, True)) for i, v in enumerate(obj)]
        if isinstance(obj, enum.Enum):
            return self._value(obj.value, path)
        if isinstance(obj, bool):
            return bool(obj)
        if isinstance(obj, str):
            return str(obj)
        if isinstance(obj, int):
            return self._int(obj, path)
        if isinstance(obj, float):
            return self._float(obj, path)
        if isinstance(obj, bytes | bytearray | memoryview):
            raw = bytes(obj)
            if self.mode in ("binary", "pickle"):
                return raw
            return base64.urlsafe_b64encode(raw).decode("ascii")
        if isinstance(obj, _dt.datetime):
            if obj.tzinfo is None or obj.utcoffset() is None:
                if not self.naive_utc:
                    raise self.fail(path, f"naive datetime {obj.isoformat()} (no timezone): "
                                          "give it a tzinfo, or set serialization."
                                          "naive_datetimes: utc")
                obj = obj.replace(tzinfo=_dt.UTC)
            if self.mode == "binary":  # msgpack's Timestamp extension (the instant, in UTC)
                return obj
            return obj.isoformat()
        if isinstance(obj, _dt.date | _dt.time):
            return obj.isoformat()
        if isinstance(obj, _dt.timedelta):
            from pydantic_core import to_jsonable_python

            return to_jsonable_python(obj)
        if isinstance(obj, uuid.UUID):
            return str(obj)
        if isinstance(obj, Decimal):
            if not obj.is_finite():
                raise self.fail(path, f"cannot serialize Decimal({str(obj)!r}): NaN and "
                                      "infinities do not round-trip")
            if self.decimal_as == "float":
                return self._float(float(obj), path)
            return str(obj)
        if isinstance(obj, Mapping):
            return {self._key(k, path): self._value(v, (path, k, False)) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [self._value(v, (path, i, True)) for i, v in enumerate(obj)]
        if isinstance(obj, set | frozenset):
            items = [self._value(v, (path, i, True)) for i, v in enumerate(obj)]
            return _sorted_items(items, canonical=self.mode == "canonical")
        if isinstance(obj, BaseModel):
            from pydantic_core import to_jsonable_python

            # a model's own config writes NaN as null: refuse it first, with its path
            self._finite(obj.model_dump(mode="python", round_trip=True), path)
            try:
                data = to_jsonable_python(obj, inf_nan_mode="constants")
            except Exception as exc:  # a field its own config cannot serialize
                raise self.fail(path, f"cannot serialize {_type_name(obj)}: {exc}") from None
            return self._value(data, path)
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return {f.name: self._value(getattr(obj, f.name), (path, f.name, False))
                    for f in dataclasses.fields(obj)}
        if self.mode == "pickle":  # pickle carries any picklable object
            return obj
        raise self.fail(path, f"cannot serialize a {_type_name(obj)}")


def _finite_floats(plain: _Plain, obj: Any, path: Any) -> None:
    if isinstance(obj, float):
        plain._float(obj, path)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _finite_floats(plain, value, (path, key, False))
    elif isinstance(obj, list | tuple | set | frozenset):
        for i, value in enumerate(obj):
            _finite_floats(plain, value, (path, i, True))


def _sorted_items(items: list[Any], *, canonical: bool) -> list[Any]:
    """A set's items in a stable order (canonical: by their canonical bytes)."""
    if canonical:
        return sorted(items, key=_canonical_bytes)
    try:
        return sorted(items)
    except TypeError:
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True, default=repr))


# ------------------------------------------------------------------------------------------------
# canonical JSON (RFC 8785)


def _es_number(value: float) -> str:
    """ECMAScript's Number::toString of a finite double (RFC 8785 section 3.2.2.3).

    Example:
        >>> [_es_number(x) for x in (1e21, 1e20, 1e-7, 0.000001, -0.0, 5.0, 333333333.33333329)]
        ['1e+21', '100000000000000000000', '1e-7', '0.000001', '0', '5', '333333333.3333333']
    """
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    mantissa, _, exp_text = repr(abs(value)).partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = whole + frac
    n = len(whole) + (int(exp_text) if exp_text else 0)
    stripped = digits.lstrip("0")
    n -= len(digits) - len(stripped)
    s = stripped.rstrip("0")
    k = len(s)
    if k <= n <= 21:
        out = s + "0" * (n - k)
    elif 0 < n <= 21:
        out = s[:n] + "." + s[n:]
    elif -6 < n <= 0:
        out = "0." + "0" * (-n) + s
    else:
        e = n - 1
        exp = f"e{'+' if e >= 0 else '-'}{abs(e)}"
        out = (s if k == 1 else s[0] + "." + s[1:]) + exp
    return sign + out


def _utf16_key(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


def _stdlib_string(text: str) -> bytes:
    return json.dumps(text, ensure_ascii=False).encode("utf-8")


def _string_encoder() -> Callable[[str], bytes]:
    try:
        import orjson
    except ImportError:
        return _stdlib_string
    return cast(Callable[[str], bytes], orjson.dumps)


def _canonical_parts(obj: Any, out: list[bytes], enc: Callable[[str], bytes]) -> None:
    cls = type(obj)
    if cls is str:
        out.append(enc(obj))
    elif obj is None:
        out.append(b"null")
    elif obj is True:
        out.append(b"true")
    elif obj is False:
        out.append(b"false")
    elif cls is int:
        out.append(str(obj).encode())
    elif cls is float:
        out.append(_es_number(obj).encode())
    elif cls is list:
        out.append(b"[")
        for i, item in enumerate(obj):
            if i:
                out.append(b",")
            _canonical_parts(item, out, enc)
        out.append(b"]")
    else:  # dict (the walk produced only plain data)
        out.append(b"{")
        for i, key in enumerate(sorted(obj, key=_utf16_key)):
            if i:
                out.append(b",")
            out.append(enc(key))
            out.append(b":")
            _canonical_parts(obj[key], out, enc)
        out.append(b"}")


def _canonical_bytes(plain: Any) -> bytes:
    out: list[bytes] = []
    _canonical_parts(plain, out, _string_encoder())
    return b"".join(out)


# ------------------------------------------------------------------------------------------------
# depth checks


# msgpack output msgspec may have written for values the other formats refuse: a float64
# NaN/infinity (0xcb, exponent all ones) and a naive datetime (a 19- or 26-character string
# "YYYY-MM-DDTHH:MM:SS[.ffffff]"); a match only means "walk the value to be sure"
_MSGPACK_SUSPECT = re.compile(rb"\xcb[\x7f\xff][\xf0-\xff]").search
_MSGPACK_NAIVE_19 = re.compile(rb"\xb3\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d").search
_MSGPACK_NAIVE_26 = re.compile(rb"\xba\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.").search

_JSON_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


def _json_depth_position(data: bytes, limit: int) -> int | None:
    """Offset of the first bracket nested deeper than ``limit`` (strings skipped), or None."""
    depth = 0
    for match in _JSON_TOKENS.finditer(data):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return match.start()
        elif token in (b"]", b"}"):
            depth -= 1
    return None


def _deeper_than(obj: Any, limit: int) -> bool:
    """Whether decoded data nests deeper than ``limit`` (breadth first, no recursion)."""
    level = [obj] if type(obj) in (dict, list) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below: list[Any] = []
        for node in level:
            for value in (node.values() if type(node) is dict else node):
                if type(value) in (dict, list):
                    below.append(value)
        level = below
    return False


# ------------------------------------------------------------------------------------------------
# type adapters


_BYTES_CONFIG = ConfigDict(val_json_bytes="base64", ser_json_bytes="base64")
# type -> (adapter, wrapped): wrapped adapters validate a 1-tuple (a model, dataclass or
# TypedDict cannot take a config; wrapping passes base64 bytes to a plain dataclass inside)
_adapters: dict[Any, tuple[TypeAdapter[Any], bool]] = {}
_adapters_lock = threading.Lock()


def _adapter(type_: Any) -> tuple[TypeAdapter[Any], bool]:
    try:
        return _adapters[type_]
    except KeyError:
        pass
    except TypeError:  # unhashable type expression: not cached
        return _build_adapter(type_)
    with _adapters_lock:
        found = _adapters.get(type_)
        if found is None:
            found = _adapters[type_] = _build_adapter(type_)
        return found


def _build_adapter(type_: Any) -> tuple[TypeAdapter[Any], bool]:
    from pydantic.errors import PydanticUserError

    if isinstance(type_, type) and issubclass(type_, BaseModel):
        return TypeAdapter(type_), False
    try:
        return TypeAdapter(type_, config=_BYTES_CONFIG), False
    except PydanticUserError:
        return TypeAdapter(tuple[type_], config=_BYTES_CONFIG), True  # type: ignore[valid-type]


# ------------------------------------------------------------------------------------------------
# the facility


class _Format:
    __slots__ = ("dumps", "kind", "loads", "name")

    def __init__(self, name: str, dumps: Callable[[Any], bytes], loads: Callable[[bytes], Any],
                 kind: str) -> None:
        self.name = name
        self.dumps = dumps
        self.loads = loads
        self.kind = kind  # builtin format name, or "custom"


@runtime_checkable
class SerializationProtocol(Protocol):
    """What ``node.serializer`` offers."""

    def dumps(self, obj: Any, format: str | None = None) -> bytes: ...

    def loads(self, data: bytes | bytearray | memoryview | str, type_: Any = None,
              format: str | None = None) -> Any: ...

    def canonical(self, obj: Any) -> bytes: ...

    def register_format(self, name: str, dumps: Callable[[Any], bytes],
                        loads: Callable[[bytes], Any]) -> None: ...

    @property
    def formats(self) -> tuple[str, ...]: ...

    def output_model(self, capability: str, model_name: str) -> type[BaseModel]: ...


_FORMAT_NAME = re.compile(r"^[a-z][a-z0-9_.+-]*$")


class Serializer:
    """JSON / MessagePack / YAML (and opt-in pickle) with typed round trips and canonical JSON.

    Args:
        config: a :class:`SerializationConfig`, a mapping or ``None`` (defaults).
        metrics: where to count bytes and errors (``None``: not counted).
        registry: the registry :meth:`output_model` looks capabilities up in.

    Raises:
        ConfigurationError: a library named in the config is not installed (with the
            ``pip install`` line).
    """

    def __init__(self, config: SerializationConfig | Mapping[str, Any] | None = None, *,
                 metrics: Any = None, registry: Registry | None = None) -> None:
        cfg = coerce_config(SerializationConfig, config, "serialization")
        self.config: SerializationConfig = cfg
        self.metrics = metrics
        self.registry = registry
        self.json_library = _pick_json(cfg.json_library)
        self.msgpack_library = _pick_msgpack(cfg.msgpack_library)
        self._max_size = cfg.max_size
        self._max_depth = cfg.max_depth
        naive_utc = cfg.naive_datetimes == "utc"
        self._plain = {
            fmt: _Plain(mode, fmt, naive_utc=naive_utc, decimal_as=cfg.decimal_as)
            for mode, fmt in (("text", "json"), ("binary", "msgpack"), ("text", "yaml"),
                              ("pickle", "pickle"), ("canonical", "canonical"))}
        self._formats: dict[str, _Format] = {}
        self._labels: dict[tuple[str, str], dict[str, str]] = {}
        self._setup_json(naive_utc)
        self._setup_msgpack()
        self._formats["yaml"] = _Format("yaml", self._yaml_dumps, self._yaml_loads, "yaml")
        if cfg.allow_pickle:
            self._formats["pickle"] = _Format("pickle", self._pickle_dumps, pickle.loads,
                                              "pickle")
        self._default = self._formats[cfg.default_format]

    def __repr__(self) -> str:
        return (f"<Serializer default={self.config.default_format} json={self.json_library} "
                f"msgpack={self.msgpack_library} formats={list(self._formats)}>")

    # -- formats ----------------------------------------------------------------------------------

    @property
    def formats(self) -> tuple[str, ...]:
        """The names of the formats ``dumps``/``loads`` accept."""
        return tuple(self._formats)

    def register_format(self, name: str, dumps: Callable[[Any], bytes],
                        loads: Callable[[bytes], Any]) -> None:
        """Add (or replace a custom) format: ``dumps(obj) -> bytes``, ``loads(bytes) -> obj``.

        Custom formats get the size limit and ``type_`` validation, not the value checks
        (their library decides what it can carry). The built-in formats cannot be replaced.

        Raises:
            ValueError: a bad name, a built-in name, or non-callables.
        """
        if not isinstance(name, str) or not _FORMAT_NAME.match(name):
            raise ValueError(f"format name {name!r} must be lowercase letters, digits and "
                             "'_.+-', starting with a letter (e.g. 'cbor')")
        existing = self._formats.get(name)
        if existing is not None and existing.kind != "custom":
            raise ValueError(f"format {name!r} is built in and cannot be replaced; register "
                             f"it under another name (e.g. '{name}2')")
        if not (callable(dumps) and callable(loads)):
            raise ValueError(f"register_format({name!r}, dumps, loads): both must be callables")
        self._formats[name] = _Format(name, dumps, loads, "custom")

    def _format(self, format: str | None) -> _Format:
        if format is None:
            return self._default
        try:
            return self._formats[format]
        except (KeyError, TypeError):
            pass
        hint = did_you_mean(format, self._formats)
        extra = ""
        if format == "pickle":
            extra = " ('pickle' needs serialization.allow_pickle: true; trusted data only)"
        raise ConfigurationError(
            f"unknown serialization format {format!r}{hint}{extra}; known: "
            f"{', '.join(self._formats)} (register_format() adds one)",
            capability="serialization")

    # -- metrics ----------------------------------------------------------------------------------

    def _count(self, fmt: str, direction: str, size: int) -> None:
        metrics = self.metrics
        if metrics is not None:
            labels = self._labels.get((fmt, direction))
            if labels is None:
                labels = self._labels[fmt, direction] = {"format": fmt, "direction": direction}
            metrics.increment("serialization_bytes_total", size, labels)

    def _error(self, err: SerializationError, fmt: str) -> SerializationError:
        if self.metrics is not None:
            self.metrics.increment("serialization_errors_total",
                                   labels={"format": fmt, "kind": err.kind})
        return err

    # -- dumps ------------------------------------------------------------------------------------

    def dumps(self, obj: Any, format: str | None = None) -> bytes:
        """Serialize ``obj`` to bytes in ``format`` (default: ``default_format``).

        Raises:
            SerializationError: an unsupported value, NaN/infinity, an integer outside the
                signed 64-bit range, a naive datetime (``reject``); the message names its path.
            PayloadTooLargeError: the output is larger than ``max_size``.
            ConfigurationError: an unknown format (with a did-you-mean).
        """
        fmt = self._default if format is None else self._format(format)
        try:
            out = fmt.dumps(obj)
        except SerializationError as exc:
            raise self._error(exc, fmt.name) from None
        except Exception as exc:
            if fmt.kind not in ("custom", "pickle"):
                raise
            raise self._error(SerializationError(
                f"{fmt.name}: cannot serialize: {exc}", format=fmt.name), fmt.name) from exc
        size = len(out)
        if size > self._max_size:
            raise self._error(PayloadTooLargeError(size, self._max_size, format=fmt.name,
                                                   direction="out"), fmt.name)
        self._count(fmt.name, "out", size)
        return out

    def _setup_json(self, naive_utc: bool) -> None:
        plain = self._plain["json"]
        if self.json_library == "orjson":
            import orjson

            # strict integers: past 2**53 orjson raises and the walk decides (64-bit range);
            # datetimes through default(): a naive one is refused or made UTC
            option = orjson.OPT_STRICT_INTEGER | orjson.OPT_PASSTHROUGH_DATETIME
            loose = 0
            encode = orjson.dumps
            value = plain._value

            def default(obj: Any) -> Any:
                return value(obj, "$")

            def dumps(obj: Any) -> bytes:
                if isinstance(obj, BaseModel):  # the model's own serializer, as model_dump_json
                    try:
                        out = obj.__pydantic_serializer__.to_json(obj)
                    except Exception:
                        out = encode(plain.convert(obj), option=loose)
                    if b"null" in out:
                        plain.convert(obj)
                    return out
                try:
                    out = encode(obj, default=default, option=option)
                except TypeError:  # orjson.JSONEncodeError: find what and where, with a path
                    converted = plain.convert(obj)
                    try:
                        out = encode(converted, option=loose)
                    except TypeError as exc:
                        raise SerializationError(f"json: cannot serialize: {exc}",
                                                 format="json") from None
                if b"null" in out:  # a None, or a NaN/infinity orjson wrote as null
                    plain.convert(obj)
                return out

            decode = orjson.loads
            decode_error: type[Exception] = orjson.JSONDecodeError
        else:
            def dumps(obj: Any) -> bytes:
                return json.dumps(plain.convert(obj), ensure_ascii=False, allow_nan=False,
                                  separators=(",", ":")).encode("utf-8")

            def decode(data: Any) -> Any:
                return json.loads(data, parse_constant=_refuse_constant)

            decode_error = ValueError
        self._json_decode = decode
        self._json_decode_error = decode_error
        self._formats["json"] = _Format("json", dumps, self._json_loads, "json")

    def _setup_msgpack(self) -> None:
        plain = self._plain["msgpack"]
        if self.msgpack_library == "missing":
            if self.config.default_format == "msgpack":
                _missing_msgpack()
            self._formats["msgpack"] = _Format("msgpack", _missing_msgpack, _missing_msgpack,
                                               "msgpack")
            return
        if self.msgpack_library == "msgspec":
            import msgspec

            value = plain._value

            def hook(obj: Any) -> Any:  # what msgspec does not know (models, ...)
                return value(obj, "$")

            decimal_format = "number" if self.config.decimal_as == "float" else "string"
            encode = msgspec.msgpack.Encoder(enc_hook=hook, decimal_format=decimal_format).encode
            plain_encode = msgspec.msgpack.Encoder().encode
            decoder = msgspec.msgpack.Decoder()
            decode: Callable[[Any], Any] = decoder.decode
            errors: tuple[type[Exception], ...] = (msgspec.DecodeError,)
            as_json = msgspec.json.encode

            def fast_dumps(obj: Any) -> bytes:
                # msgspec writes every type itself; the output is scanned for what it lets
                # through (NaN/infinity, integers past 2**63, naive datetimes, Decimal NaN) and
                # only then is the value walked (it raises with the path, or re-encodes)
                try:
                    out = encode(obj)
                except Exception as exc:
                    converted = plain.convert(obj)
                    try:
                        return plain_encode(converted)
                    except Exception:
                        raise SerializationError(f"msgpack: cannot serialize: {exc}",
                                                 format="msgpack") from None
                if _MSGPACK_SUSPECT(out) is not None or b"\xcf" in out or \
                        _MSGPACK_NAIVE_19(out) is not None or \
                        _MSGPACK_NAIVE_26(out) is not None or b"NaN" in out or b"Infinity" in out:
                    return plain_encode(plain.convert(obj))
                return out

            def depth_exceeds(obj: Any, limit: int) -> bool:
                try:  # an upper bound at C speed: brackets of its JSON form
                    text = as_json(obj)
                except Exception:
                    return _deeper_than(obj, limit)
                if text.count(b"[") + text.count(b"{") <= limit:
                    return False
                return _deeper_than(obj, limit)

            self._msgpack_depth = depth_exceeds
            self._msgpack_decode = decode
            self._msgpack_errors = errors
            self._formats["msgpack"] = _Format("msgpack", fast_dumps, self._msgpack_loads,
                                               "msgpack")
            return
        import msgpack

        def encode(obj: Any) -> bytes:
            return cast(bytes, msgpack.packb(obj, use_bin_type=True, datetime=True))

        def decode(data: Any) -> Any:
            return msgpack.unpackb(data, raw=False, strict_map_key=False, timestamp=3)

        errors = (ValueError, msgpack.UnpackException, msgpack.ExtraData)

        def dumps(obj: Any) -> bytes:
            return encode(plain.convert(obj))

        self._msgpack_depth = _deeper_than
        self._msgpack_decode = decode
        self._msgpack_errors = errors
        self._formats["msgpack"] = _Format("msgpack", dumps, self._msgpack_loads, "msgpack")

    def _yaml_dumps(self, obj: Any) -> bytes:
        import yaml

        text = yaml.dump(self._plain["yaml"].convert(obj), Dumper=_yaml_dumper(),
                         allow_unicode=True, sort_keys=False, default_flow_style=False)
        return text.encode("utf-8")

    def _pickle_dumps(self, obj: Any) -> bytes:
        self._plain["pickle"].convert(obj)  # the same refusals as every format (NaN, ...)
        return pickle.dumps(obj, protocol=5)

    # -- loads ------------------------------------------------------------------------------------

    def loads(self, data: bytes | bytearray | memoryview | str, type_: Any = None,
              format: str | None = None) -> Any:
        """Deserialize ``data``; with ``type_``, validate the result into it.

        Raises:
            DeserializationError: malformed input (format, position, a short escaped
                excerpt), nesting deeper than ``max_depth``, or data that is not a ``type_``
                (with pydantic's errors in ``.errors``).
            PayloadTooLargeError: the input is larger than ``max_size``.
            ConfigurationError: an unknown format (with a did-you-mean).
        """
        fmt = self._default if format is None else self._format(format)
        if type(data) is not bytes:
            data = _as_bytes(data)
        size = len(data)
        if size > self._max_size:
            raise self._error(PayloadTooLargeError(size, self._max_size, format=fmt.name,
                                                   direction="in"), fmt.name)
        self._count(fmt.name, "in", size)
        try:
            if fmt.kind == "json":
                return self._json_loads(data, type_)
            if fmt.kind in ("custom", "pickle"):
                try:
                    obj = fmt.loads(data)
                except Exception as exc:
                    raise DeserializationError(
                        f"cannot decode {fmt.name}: {exc} (input starts "
                        f"{_excerpt(data, 0)!r})", format=fmt.name) from exc
            else:
                obj = fmt.loads(data)
            return obj if type_ is None else self._validate(obj, type_, fmt.name, data)
        except SerializationError as exc:
            raise self._error(exc, fmt.name) from exc.__cause__

    def _decode_failure(self, fmt: str, data: bytes, reason: str, position: int | None,
                        kind: str = "decode") -> DeserializationError:
        line = column = None
        where = ""
        if position is not None:
            position = max(0, min(position, len(data)))
            if fmt in ("json", "yaml"):
                line = data.count(b"\n", 0, position) + 1
                column = position - (data.rfind(b"\n", 0, position) + 1) + 1
                where = f" at line {line} column {column} (byte {position})"
            else:
                where = f" at byte {position}"
        return DeserializationError(
            f"cannot decode {fmt}: {reason}{where}; input near there: "
            f"{_excerpt(data, position)!r}", format=fmt, kind=kind, position=position,
            line=line, column=column)

    def _too_deep(self, fmt: str, data: bytes, position: int | None) -> DeserializationError:
        return self._decode_failure(
            fmt, data, f"nesting deeper than max_depth={self._max_depth} (raise "
            "serialization.max_depth if this data is legitimate)", position, kind="depth")

    def _json_loads(self, data: bytes, type_: Any = None) -> Any:
        limit = self._max_depth
        if len(data) > limit and data.count(b"[") + data.count(b"{") > limit:
            position = _json_depth_position(data, limit)
            if position is not None:
                raise self._too_deep("json", data, position)
        if type_ is not None:
            adapter, wrapped = _adapter(type_)
            if not wrapped:
                try:
                    return adapter.validate_json(data)
                except ValidationError as exc:
                    raise self._validation_failure(exc, "json", data) from None
        try:
            obj = self._json_decode(data)
        except self._json_decode_error as exc:
            raise self._json_failure(exc, data) from None
        except RecursionError:
            raise self._too_deep("json", data, None) from None
        return obj if type_ is None else self._validate(obj, type_, "json", data)

    def _json_failure(self, exc: Exception, data: bytes) -> DeserializationError:
        position = getattr(exc, "pos", None)
        reason = getattr(exc, "msg", None) or str(exc)
        if isinstance(exc, UnicodeDecodeError):
            position, reason = exc.start, f"invalid UTF-8 ({exc.reason})"
        elif position is not None and isinstance(getattr(exc, "doc", None), str):
            # positions are in characters of the decoded text: convert to bytes
            position = len(exc.doc[:position].encode("utf-8", "surrogatepass"))  # type: ignore[attr-defined]
        return self._decode_failure("json", data, str(reason), position)

    def _msgpack_loads(self, data: bytes) -> Any:
        try:
            obj = self._msgpack_decode(data)
        except self._msgpack_errors as exc:
            raise self._decode_failure("msgpack", data, str(exc) or type(exc).__name__,
                                       None) from None
        except RecursionError:
            raise self._too_deep("msgpack", data, None) from None
        if len(data) > self._max_depth and self._msgpack_depth(obj, self._max_depth):
            raise self._too_deep("msgpack", data, None)
        return obj

    def _yaml_loads(self, data: bytes) -> Any:
        from onex_compose._loading import load_yaml_text
        from onex_compose.exceptions import ContractError

        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self._decode_failure("yaml", data, f"invalid UTF-8 ({exc.reason})",
                                       exc.start) from None
        try:
            obj = load_yaml_text(text, "<yaml input>").data
        except ContractError as exc:
            problem = exc.problems[0] if exc.problems else {}
            line = problem.get("line")
            message = str(problem.get("message") or exc)
            kind = "depth" if "nesting" in message else "decode"
            position = None
            if isinstance(line, int):
                position = _line_offset(data, line)
            raise self._decode_failure("yaml", data, message, position, kind=kind) from None
        except RecursionError:
            raise self._too_deep("yaml", data, None) from None
        if _deeper_than(obj, self._max_depth):
            raise self._too_deep("yaml", data, None)
        return obj

    def _validate(self, obj: Any, type_: Any, fmt: str, data: bytes) -> Any:
        adapter, wrapped = _adapter(type_)
        try:
            if wrapped:
                return adapter.validate_python((obj,))[0]
            return adapter.validate_python(obj)
        except ValidationError as exc:
            raise self._validation_failure(exc, fmt, data, wrapped) from None

    def _validation_failure(self, exc: ValidationError, fmt: str, data: bytes,
                            wrapped: bool = False) -> DeserializationError:
        errors = exc.errors(include_url=False, include_input=False)
        if errors and errors[0]["type"] == "json_invalid":
            message = str(errors[0].get("ctx", {}).get("error") or errors[0]["msg"])
            match = re.search(r"line (\d+) column (\d+)", message)
            position = None
            if match:
                position = _line_offset(data, int(match[1])) + int(match[2]) - 1
                message = message[:match.start()].rstrip(" at")
            return self._decode_failure(fmt, data, message, position)
        for error in errors:
            loc = tuple(error["loc"])
            error["loc"] = loc[1:] if wrapped and loc[:1] == (0,) else loc
        shown = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '$'}: {e['msg']}" for e in errors[:10])
        return DeserializationError(
            f"{fmt} data is not a valid {_describe(exc.title)}: {len(errors)} error(s): "
            f"{shown}", format=fmt, errors=errors)

    # -- canonical --------------------------------------------------------------------------------

    def canonical(self, obj: Any) -> bytes:
        """RFC 8785 (JCS) canonical JSON of ``obj``: the bytes to hash or sign.

        Raises:
            SerializationError: NaN, infinities, integers beyond +-2**53, unsupported values
                (with their path), or strings that are not valid Unicode.
            PayloadTooLargeError: the output is larger than ``max_size``.
        """
        try:
            plain = self._plain["canonical"].convert(obj)
            try:
                out = _canonical_bytes(plain)
            except (UnicodeEncodeError, TypeError) as exc:
                raise SerializationError(f"canonical: a string is not valid Unicode ({exc})",
                                         format="canonical") from None
            except RecursionError:
                raise SerializationError("canonical: nesting too deep",
                                         format="canonical") from None
        except SerializationError as exc:
            raise self._error(exc, "canonical") from None
        if len(out) > self._max_size:
            raise self._error(PayloadTooLargeError(len(out), self._max_size, format="canonical",
                                                   direction="out"), "canonical")
        self._count("canonical", "out", len(out))
        return out

    # -- output models ----------------------------------------------------------------------------

    def output_model(self, capability: str, model_name: str) -> type[BaseModel]:
        """The Pydantic model of a contract's seed 002 ``output_models`` entry (cached).

        Raises:
            UnknownCapabilityError, UnknownOutputModelError: with a did-you-mean.
        """
        from onex_compose.capabilities._output_models import output_model

        return output_model(capability, model_name, registry=self.registry)


_YAML_DUMPER: Any = None
_YAML_PLAIN_OK = re.compile(r"[\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufffd]*")


def _yaml_dumper() -> Any:
    """``SafeDumper`` whose strings with line breaks or non-printable characters are written
    double-quoted (escaped): PyYAML folds NEL, U+2028 and U+2029 in other styles."""
    global _YAML_DUMPER
    if _YAML_DUMPER is None:
        import yaml

        class Dumper(yaml.SafeDumper):
            pass

        def represent_str(dumper: Any, data: str) -> Any:
            style = None if _YAML_PLAIN_OK.fullmatch(data) else '"'
            return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)

        Dumper.add_representer(str, represent_str)
        _YAML_DUMPER = Dumper
    return _YAML_DUMPER


def _describe(title: str) -> str:
    return title if title else "value"


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (NaN and infinities do not round-trip)")


def _line_offset(data: bytes, line: int) -> int:
    offset = 0
    for _ in range(line - 1):
        nxt = data.find(b"\n", offset)
        if nxt < 0:
            return len(data)
        offset = nxt + 1
    return offset


def _as_bytes(data: Any) -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8", "surrogatepass")
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise TypeError(f"loads() takes bytes or str, got a {_type_name(data)}")


def _pick_json(choice: str) -> str:
    found = importlib.util.find_spec("orjson") is not None
    if choice == "stdlib" or (choice == "auto" and not found):
        return "stdlib"
    if not found:
        raise ConfigurationError(
            "serialization: json_library 'orjson' is not installed. Install it with: "
            "pip install 'onex-compose[serialization]' (or use json_library: auto/stdlib).",
            capability="serialization")
    return "orjson"


def _missing_msgpack(*_: Any) -> Any:
    raise ConfigurationError(
        "serialization: the msgpack format needs msgspec (or msgpack), which is not installed. "
        "Install it with: pip install 'onex-compose[serialization]'", capability="serialization")


def _pick_msgpack(choice: str) -> str:
    has_msgspec = importlib.util.find_spec("msgspec") is not None
    has_msgpack = importlib.util.find_spec("msgpack") is not None
    if choice == "auto":
        if has_msgspec:
            return "msgspec"
        if has_msgpack:
            return "msgpack"
        return "missing"
    if (choice == "msgspec" and has_msgspec) or (choice == "msgpack" and has_msgpack):
        return choice
    extra = " or: pip install msgpack" if choice == "msgpack" else ""
    raise ConfigurationError(
        f"serialization: msgpack_library {choice!r} is not installed. Install it with: "
        f"pip install 'onex-compose[serialization]' (msgspec){extra}.",
        capability="serialization")


# ------------------------------------------------------------------------------------------------
# the mixin


class MixinSerialization:
    """Object serialization and deserialization: ``self.serializer``.

    Requires ``metrics`` (bytes and errors are counted).

    Example:
        >>> from onex_compose import NodeCompute, compose
        >>> node = compose(NodeCompute, ["serialization"])()
        >>> node.serializer.loads(node.serializer.dumps({"a": [1, 2]}))
        {'a': [1, 2]}
    """

    __onex_capability__ = "serialization"
    __slots__ = ()

    def setup_serialization(self, config: SerializationConfig | Mapping[str, Any] | None = None,
                            ) -> None:
        """Build the serializer from config (reconfiguring keeps registered custom formats)."""
        node = cast(Any, self)
        old = getattr(node, "serializer", None)
        serializer = Serializer(config, metrics=node.metrics)
        if serializer.config.allow_pickle:
            from onex_compose.capabilities._log import logger

            logger.warning("serialization: allow_pickle is on. {}", PICKLE_WARNING)
        if isinstance(old, Serializer):
            for name, fmt in old._formats.items():
                if fmt.kind == "custom":
                    serializer.register_format(name, fmt.dumps, fmt.loads)
        node.serializer = serializer

    @facility
    def serializer(self) -> Serializer:
        """The node's serializer (default config when setup never ran)."""
        return Serializer(SerializationConfig(), metrics=cast(Any, self).metrics)
