"""The value walk (plain data for one format, errors with the path of the bad value) and
RFC 8785 canonical JSON."""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import enum
import json
import math
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, cast

from pydantic import BaseModel

from onex_compose.capabilities.serialization._model import SerializationError

_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_JS_SAFE = 2**53
_EXCERPT = 40

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

            # a model's own config writes a float NaN as null and a Decimal NaN as "NaN":
            # refuse them first, with their path
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
    """Refuse a NaN/infinite float or Decimal anywhere in a model's ``model_dump`` (a model's
    own serializer writes them as ``null`` or the strings ``"NaN"`` / ``"Infinity"``)."""
    if isinstance(obj, float):
        plain._float(obj, path)
    elif isinstance(obj, Decimal):
        if not obj.is_finite():
            raise plain.fail(path, f"cannot serialize Decimal({str(obj)!r}): NaN and "
                                   "infinities do not round-trip")
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
