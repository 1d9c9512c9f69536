"""The :class:`Serializer` facility: formats, limits, typed loads, metrics."""

from __future__ import annotations

import functools
import importlib.util
import json
import pickle
import re
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from onex_compose import coerce_config
from onex_compose.capabilities.serialization._model import (
    DeserializationError,
    PayloadTooLargeError,
    SerializationConfig,
    SerializationError,
)
from onex_compose.capabilities.serialization._walk import (
    _canonical_bytes,
    _excerpt,
    _Plain,
    _type_name,
)
from onex_compose.exceptions import ConfigurationError, did_you_mean

if TYPE_CHECKING:
    from onex_compose._registry import Registry

__all__ = ["PICKLE_WARNING", "SerializationProtocol", "Serializer"]

PICKLE_WARNING = ("pickle runs code from the data it loads: use the 'pickle' format only for data "
                  "that only trusted processes can write, else keep json/msgpack/yaml")

# ------------------------------------------------------------------------------------------------
# depth checks


# msgpack output msgspec may have written for values the other formats refuse: a float64
# NaN/infinity (0xcb, exponent all ones), an unsigned 64-bit integer past 2**63 - 1 (0xcf, top
# bit set), a naive datetime (a 19- or 26-character string "YYYY-MM-DDTHH:MM:SS[.ffffff]")
# and a Decimal NaN/infinity (the strings "NaN", "-sNaN", "NaN12", "Infinity", ...); a match
# only means "walk the value to be sure"
_MSGPACK_FLOAT_NAN = re.compile(rb"\xcb[\x7f\xff][\xf0-\xff]").search
_MSGPACK_UINT64_HIGH = re.compile(rb"\xcf[\x80-\xff]").search
_MSGPACK_NAIVE_19 = re.compile(rb"\xb3\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d").search
_MSGPACK_NAIVE_26 = re.compile(rb"\xba\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.").search
_NAN_TEXT = re.compile(rb"NaN").search

# bytes that cannot open a nesting level (deleted before counting what is left, an upper
# bound of the depth): JSON's [ and {; msgpack's fixmap, fixarray, array16/32, map16/32
_NOT_JSON_OPENER = bytes(b for b in range(256) if b not in b"[{")
_NOT_MSGPACK_CONTAINER = bytes(b for b in range(256)
                               if not (0x80 <= b <= 0x9f or 0xdc <= b <= 0xdf))


def _msgpack_suspect(out: bytes) -> bool:
    """Whether msgspec's output may hold a value the other formats refuse (then walk it).

    Every suspect value has a marker byte (0xcf; 0x7f or 0xff after 0xcb; 0xb3, 0xba; "N"
    of "NaN"; "I" of "Infinity"). Each is looked for with ``int in bytes``, a ``memchr``
    without a method call (about 15 ns for a 700-byte document, where one multi-byte
    ``bytes.find`` or regex pass costs 0.3-0.5 µs), and only a marker that is present sends
    its exact pattern through the output.
    """
    if 0xcf in out and _MSGPACK_UINT64_HIGH(out) is not None:
        return True
    if (0x7f in out or 0xff in out) and _MSGPACK_FLOAT_NAN(out) is not None:
        return True
    if 0xb3 in out and _MSGPACK_NAIVE_19(out) is not None:
        return True
    if 0xba in out and _MSGPACK_NAIVE_26(out) is not None:
        return True
    if 0x4e in out and out.find(b"N") != out.rfind(b"N") \
            and _NAN_TEXT(out) is not None:  # "NaN" has two "N": one alone is no NaN
        return True
    return 0x49 in out and out.find(b"Infinity") >= 0  # "I"


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
    """One format: its raw ``dumps``/``loads`` and the complete per-call paths built from them.

    ``dump(obj, format=None)`` and ``load(data, type_=None, format=None)`` do everything a call
    does (value checks, size limit, byte count, errors counted), so ``Serializer.dumps`` is a
    single call into them; a ``format`` naming another format is passed on to that one.
    """

    __slots__ = ("dump", "dumps", "kind", "load", "loads", "name")

    def __init__(self, name: str, dumps: Callable[[Any], bytes], loads: Callable[[bytes], Any],
                 kind: str) -> None:
        self.name = name
        self.dumps = dumps
        self.loads = loads
        self.kind = kind  # builtin format name, or "custom"
        self.dump: Callable[..., bytes] = dumps
        self.load: Callable[..., Any] = loads


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


class _NeverRaised(Exception):
    """Stands for a library exception the configured library does not have."""


def _no_count(size: int = 1) -> None:
    return None


_FORMAT_NAME = re.compile(r"^[a-z][a-z0-9_.+-]*$")
# "null" in orjson's output: a None, or a float NaN/infinity orjson wrote as null (it has no
# option to refuse them). A literal regex search: sre's first-character loop is cheaper than
# bytes.find's bloom-filtered search here (the needle's letters share their filter bits with
# "," "." and "5", which fill JSON output)
_JSON_NULL = re.compile(rb"null").search


class Serializer:
    """JSON / MessagePack / YAML (and opt-in pickle) with typed round trips and canonical JSON.

    Args:
        config: a :class:`SerializationConfig`, a mapping or ``None`` (defaults).
        metrics: where to count bytes and errors (``None``: not counted).
        registry: the registry :meth:`output_model` looks capabilities up in.

    Raises:
        ConfigurationError: a library named in the config is not installed (with the
            ``pip install`` line).

    Speed: each format's complete call path is a closure built once per configuration (and
    again when :attr:`metrics` changes), and the instance's ``dumps``/``loads`` are the
    default format's closures, so ``node.serializer.dumps(doc)`` is one Python call around
    the library's own (``benchmarks/bench_serialization.py`` measures what is left).
    """

    def __init__(self, config: SerializationConfig | Mapping[str, Any] | None = None, *,
                 metrics: Any = None, registry: Registry | None = None) -> None:
        cfg = coerce_config(SerializationConfig, config, "serialization")
        self.config: SerializationConfig = cfg
        self._formats: dict[str, _Format] = {}
        self._metrics = metrics
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
        self._setup_json()
        self._msgpack_stack_error: type[Exception] = _NeverRaised
        self._setup_msgpack()
        self._formats["yaml"] = _Format("yaml", self._yaml_dumps, self._yaml_loads, "yaml")
        if cfg.allow_pickle:
            self._formats["pickle"] = _Format("pickle", self._pickle_dumps, pickle.loads,
                                              "pickle")
        self._build()

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
        fmt = self._formats[name] = _Format(name, dumps, loads, "custom")
        self._compile(fmt)

    def _format(self, format: str | None) -> _Format:
        if format is None:
            return self._formats[self.config.default_format]
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

    @property
    def metrics(self) -> Any:
        """Where bytes and errors are counted (``None``: not counted). Assigning another
        facility rebuilds the call paths around its bound counters."""
        return self._metrics

    @metrics.setter
    def metrics(self, metrics: Any) -> None:
        self._metrics = metrics
        self._build()

    def _counter(self, name: str, direction: str) -> Callable[[int], None]:
        """The bound ``serialization_bytes_total{format, direction}`` counter."""
        metrics = self._metrics
        labels = {"format": name, "direction": direction}
        if metrics is None:
            return _no_count
        if hasattr(metrics, "bind_counter"):
            return cast(Callable[[int], None],
                        metrics.bind_counter("serialization_bytes_total", labels))
        return functools.partial(metrics.increment, "serialization_bytes_total", labels=labels)

    def _count(self, fmt: str, direction: str, size: int) -> None:
        metrics = self._metrics
        if metrics is not None:
            metrics.increment("serialization_bytes_total", size,
                              {"format": fmt, "direction": direction})

    def _error(self, err: SerializationError, fmt: str) -> SerializationError:
        if self._metrics is not None:
            self._metrics.increment("serialization_errors_total",
                                    labels={"format": fmt, "kind": err.kind})
        return err

    def _too_large(self, size: int, fmt: str, direction: str) -> SerializationError:
        return self._error(PayloadTooLargeError(size, self._max_size, format=fmt,
                                                direction=direction), fmt)

    # -- the call paths ---------------------------------------------------------------------------

    def _build(self) -> None:
        """(Re)build every format's call paths, and point ``dumps``/``loads`` at the default's."""
        if not self._formats:
            return
        for fmt in self._formats.values():
            self._compile(fmt)
        default = self._formats[self.config.default_format]
        self.dumps = default.dump  # type: ignore[method-assign]
        self.loads = default.load  # type: ignore[method-assign]

    def _compile(self, fmt: _Format) -> None:
        if fmt.kind == "json" and self.json_library == "orjson":
            fmt.dump, fmt.load = self._orjson_paths(fmt)
        elif fmt.kind == "msgpack" and self.msgpack_library == "msgspec":
            fmt.dump, fmt.load = self._msgspec_paths(fmt)
        else:
            fmt.dump, fmt.load = self._generic_paths(fmt)

    def _generic_paths(self, fmt: _Format) -> tuple[Callable[..., bytes], Callable[..., Any]]:
        """The call paths around a format's raw functions (stdlib json, msgpack, YAML, pickle,
        custom formats)."""
        name, raw_dumps, raw_loads, kind = fmt.name, fmt.dumps, fmt.loads, fmt.kind
        lenient = kind in ("custom", "pickle")  # any exception of theirs is an encode error
        count_out, count_in = self._counter(name, "out"), self._counter(name, "in")
        max_size, error, formats, lookup = (self._max_size, self._error, self._formats,
                                            self._format)
        validate, excerpt = self._validate, _excerpt

        def dump(obj: Any, format: str | None = None) -> bytes:
            if format is not None and format != name:  # another format's path
                return (formats.get(format) or lookup(format)).dump(obj)  # type: ignore[no-any-return]
            try:
                out = raw_dumps(obj)
            except SerializationError as exc:
                raise error(exc, name) from None
            except Exception as exc:
                if not lenient:
                    raise
                raise error(SerializationError(f"{name}: cannot serialize: {exc}",
                                               format=name), name) from exc
            size = len(out)
            if size > max_size:
                raise self._too_large(size, name, "out")
            count_out(size)
            return out

        def load(data: Any, type_: Any = None, format: str | None = None) -> Any:
            if format is not None and format != name:  # another format's path
                return (formats.get(format) or lookup(format)).load(data, type_)
            if type(data) is not bytes:
                data = _as_bytes(data)
            size = len(data)
            if size > max_size:
                raise self._too_large(size, name, "in")
            count_in(size)
            try:
                if lenient:
                    try:
                        obj = raw_loads(data)
                    except Exception as exc:
                        raise DeserializationError(
                            f"cannot decode {name}: {exc} (input starts "
                            f"{excerpt(data, 0)!r})", format=name) from exc
                elif kind == "json":
                    return self._json_loads(data, type_)
                else:
                    obj = raw_loads(data)
                return obj if type_ is None else validate(obj, type_, name, data)
            except SerializationError as exc:
                raise error(exc, name) from exc.__cause__

        return dump, load

    def _orjson_paths(self, fmt: _Format) -> tuple[Callable[..., bytes], Callable[..., Any]]:
        """JSON through orjson: plain dicts and lists go straight to ``orjson.dumps`` (its
        output checked for ``null``, the only trace of a NaN/infinity); ``loads`` bounds the
        nesting by counting brackets at C speed before decoding."""
        import orjson

        name, raw_dumps = fmt.name, fmt.dumps
        count_out, count_in = self._counter(name, "out"), self._counter(name, "in")
        max_size, limit, error, formats, lookup = (
            self._max_size, self._max_depth, self._error, self._formats, self._format)
        plain = self._plain["json"]
        convert, value, encode, decode = plain.convert, plain._value, orjson.dumps, orjson.loads
        decode_error = orjson.JSONDecodeError
        # strict integers: past 2**53 orjson raises and the walk decides (64-bit range);
        # datetimes through default(): a naive one is refused or made UTC
        option = orjson.OPT_STRICT_INTEGER | orjson.OPT_PASSTHROUGH_DATETIME
        null, not_opener = _JSON_NULL, _NOT_JSON_OPENER
        typed, too_deep, failure = self._json_typed, self._json_too_deep, self._json_failure

        def default(obj: Any) -> Any:
            return value(obj, "$")

        def dump(obj: Any, format: str | None = None) -> bytes:
            if format is not None and format != name:  # another format's path
                return (formats.get(format) or lookup(format)).dump(obj)  # type: ignore[no-any-return]
            try:
                cls = type(obj)
                if cls is dict or cls is list:
                    try:
                        out = encode(obj, default, option)
                    except TypeError:  # orjson.JSONEncodeError: the walk says what and where
                        out = raw_dumps(obj)
                    else:
                        if null(out) is not None:  # a None, or a NaN/infinity written as null
                            convert(obj)
                else:
                    out = raw_dumps(obj)
            except SerializationError as exc:
                raise error(exc, name) from None
            size = len(out)
            if size > max_size:
                raise self._too_large(size, name, "out")
            count_out(size)
            return out

        def load(data: Any, type_: Any = None, format: str | None = None) -> Any:
            if format is not None and format != name:  # another format's path
                return (formats.get(format) or lookup(format)).load(data, type_)
            if type(data) is not bytes:
                data = _as_bytes(data)
            size = len(data)
            if size > max_size:
                raise self._too_large(size, name, "in")
            count_in(size)
            # at most as deep as it has [ and { bytes: counted at C speed (one translate)
            if size > limit and len(data.translate(None, not_opener)) > limit:
                too_deep(data)
            if type_ is not None:
                return typed(data, type_)
            try:
                return decode(data)
            except decode_error as exc:
                raise error(failure(exc, data), name) from None

        return dump, load

    def _msgspec_paths(self, fmt: _Format) -> tuple[Callable[..., bytes], Callable[..., Any]]:
        """MessagePack through msgspec: its output is scanned for what it lets through (see
        ``_msgpack_suspect``) and only then is the value walked."""
        name, raw_dumps = fmt.name, fmt.dumps
        count_out, count_in = self._counter(name, "out"), self._counter(name, "in")
        max_size, limit, error, formats, lookup = (
            self._max_size, self._max_depth, self._error, self._formats, self._format)
        encode, decode, errors = self._msgspec_encode, self._msgpack_decode, self._msgpack_errors
        suspect = _msgpack_suspect
        not_container, deeper, validate = _NOT_MSGPACK_CONTAINER, _deeper_than, self._validate

        def dump(obj: Any, format: str | None = None) -> bytes:
            if format is not None and format != name:  # another format's path
                return (formats.get(format) or lookup(format)).dump(obj)  # type: ignore[no-any-return]
            try:
                cls = type(obj)
                if cls is dict or cls is list:
                    try:
                        out = encode(obj)
                    except Exception:
                        out = raw_dumps(obj)
                    else:
                        if suspect(out):
                            out = raw_dumps(obj)
                else:
                    out = raw_dumps(obj)
            except SerializationError as exc:
                raise error(exc, name) from None
            size = len(out)
            if size > max_size:
                raise self._too_large(size, name, "out")
            count_out(size)
            return out

        def load(data: Any, type_: Any = None, format: str | None = None) -> Any:
            if format is not None and format != name:  # another format's path
                return (formats.get(format) or lookup(format)).load(data, type_)
            if type(data) is not bytes:
                data = _as_bytes(data)
            size = len(data)
            if size > max_size:
                raise self._too_large(size, name, "in")
            count_in(size)
            try:
                obj = decode(data)
            except errors as exc:
                raise error(self._decode_failure("msgpack", data, str(exc), None),
                            name) from None
            except RecursionError:
                raise error(self._too_deep("msgpack", data, None), name) from None
            # an upper bound at C speed (every container header byte, and some others), and
            # only past it the walk
            if size > limit and len(data.translate(None, not_container)) > limit \
                    and deeper(obj, limit):
                raise error(self._too_deep("msgpack", data, None), name)
            if type_ is None:
                return obj
            try:
                return validate(obj, type_, name, data)
            except SerializationError as exc:
                raise error(exc, name) from None

        return dump, load

    def dumps(self, obj: Any, format: str | None = None) -> bytes:
        """Serialize ``obj`` to bytes in ``format`` (default: ``default_format``).

        (An instance's ``dumps`` is the default format's prebuilt call path, which does exactly
        this.)

        Raises:
            SerializationError: an unsupported value, NaN/infinity, an integer outside the
                signed 64-bit range, a naive datetime (``reject``); the message names its path.
            PayloadTooLargeError: the output is larger than ``max_size``.
            ConfigurationError: an unknown format (with a did-you-mean).
        """
        return self._format(format).dump(obj)  # type: ignore[no-any-return]

    def loads(self, data: bytes | bytearray | memoryview | str, type_: Any = None,
              format: str | None = None) -> Any:
        """Deserialize ``data``; with ``type_``, validate the result into it.

        (An instance's ``loads`` is the default format's prebuilt call path.)

        Raises:
            DeserializationError: malformed input (format, position, a short escaped
                excerpt), nesting deeper than ``max_depth``, or data that is not a ``type_``
                (with pydantic's errors in ``.errors``).
            PayloadTooLargeError: the input is larger than ``max_size``.
            ConfigurationError: an unknown format (with a did-you-mean).
        """
        return self._format(format).load(data, type_)

    # -- the raw formats --------------------------------------------------------------------------

    def _setup_json(self) -> None:
        plain = self._plain["json"]
        if self.json_library == "orjson":
            import orjson

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
                    # a float NaN/infinity is written null (or NaN/Infinity: the model's
                    # ser_json_inf_nan), a Decimal one "NaN"/"Infinity": the walk refuses them
                    if _JSON_NULL(out) is not None or (0x4e in out and _NAN_TEXT(out) is not None) \
                            or (0x49 in out and out.find(b"Infinity") >= 0):
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
                if _JSON_NULL(out) is not None:  # a None, or a NaN/infinity written as null
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
            errors: tuple[type[Exception], ...] = (msgspec.DecodeError,)

            def dumps(obj: Any) -> bytes:
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
                if _msgpack_suspect(out):
                    return plain_encode(plain.convert(obj))
                return out

            self._msgspec_encode = encode
            self._msgpack_decode = decoder.decode
            self._msgpack_errors = errors
            self._formats["msgpack"] = _Format("msgpack", dumps, self._msgpack_loads,
                                               "msgpack")
            return
        import msgpack

        def encode_packb(obj: Any) -> bytes:
            return cast(bytes, msgpack.packb(obj, use_bin_type=True, datetime=True))

        def decode_unpackb(data: Any) -> Any:
            return msgpack.unpackb(data, raw=False, strict_map_key=False, timestamp=3)

        def packb_dumps(obj: Any) -> bytes:
            return encode_packb(plain.convert(obj))

        self._msgpack_stack_error = msgpack.StackError  # its unpacker's nesting limit
        self._msgpack_decode = decode_unpackb
        self._msgpack_errors = (ValueError, msgpack.UnpackException, msgpack.ExtraData)
        self._formats["msgpack"] = _Format("msgpack", packb_dumps, self._msgpack_loads,
                                           "msgpack")

    def _yaml_dumps(self, obj: Any) -> bytes:
        import yaml

        text = yaml.dump(self._plain["yaml"].convert(obj), Dumper=_yaml_dumper(),
                         allow_unicode=True, sort_keys=False, default_flow_style=False)
        return text.encode("utf-8")

    def _pickle_dumps(self, obj: Any) -> bytes:
        self._plain["pickle"].convert(obj)  # the same refusals as every format (NaN, ...)
        return pickle.dumps(obj, protocol=5)

    # -- loads ------------------------------------------------------------------------------------

    def _decode_failure(self, fmt: str, data: bytes, reason: str, position: int | None,
                        kind: str = "decode") -> DeserializationError:
        line = column = None
        where = ""
        reason = reason or "malformed input"
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

    def _json_too_deep(self, data: bytes) -> None:
        """Raise (counted) if JSON ``data`` nests deeper than ``max_depth`` (strings skipped)."""
        position = _json_depth_position(data, self._max_depth)
        if position is not None:
            raise self._error(self._too_deep("json", data, position), "json")

    def _json_loads(self, data: bytes, type_: Any = None) -> Any:
        """JSON ``loads`` after the size check (stdlib json's path; also orjson's typed one)."""
        limit = self._max_depth
        if len(data) > limit and len(data.translate(None, _NOT_JSON_OPENER)) > limit:
            position = _json_depth_position(data, limit)
            if position is not None:
                raise self._too_deep("json", data, position)
        if type_ is not None:
            return self._json_typed_raw(data, type_)
        try:
            return self._json_decode(data)
        except self._json_decode_error as exc:
            raise self._json_failure(exc, data) from None
        except RecursionError:
            raise self._too_deep("json", data, None) from None

    def _json_typed(self, data: bytes, type_: Any) -> Any:
        """Typed JSON ``loads`` after the size and depth checks (errors counted)."""
        try:
            return self._json_typed_raw(data, type_)
        except SerializationError as exc:
            raise self._error(exc, "json") from None

    def _json_typed_raw(self, data: bytes, type_: Any) -> Any:
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
        return self._validate(obj, type_, "json", data)

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
            if isinstance(exc, self._msgpack_stack_error):
                raise self._too_deep("msgpack", data, None) from None
            raise self._decode_failure("msgpack", data, str(exc) or type(exc).__name__,
                                       None) from None
        except RecursionError:
            raise self._too_deep("msgpack", data, None) from None
        limit = self._max_depth
        # an upper bound at C speed: every container header byte (and some others) counted
        if len(data) > limit and len(data.translate(None, _NOT_MSGPACK_CONTAINER)) > limit \
                and _deeper_than(obj, limit):
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
    extra = "msgpack" if choice == "msgpack" else "serialization"
    raise ConfigurationError(
        f"serialization: msgpack_library {choice!r} is not installed. Install it with: "
        f"pip install 'onex-compose[{extra}]' (or use msgpack_library: auto).",
        capability="serialization")
