"""Cache keys: a canonical encoder for any data, hashed into a stable 32-character key.

Why ``generate_cache_key`` has its own canonical encoder: ``json.dumps(sort_keys=True)`` (the
usual recipe) makes ``{1: 'a'}`` and ``{'1': 'a'}`` (and ``(1, 2)`` and ``[1, 2]``) the same key
and fails on sets, bytes and dataclasses; ``pickle`` output depends on insertion order and
object identity. The encoder emits JSON text for JSON data (a flat dict of scalars takes a
short fast path) and tagged forms for everything else, then hashes it (BLAKE2b, 128 bits). Set
elements and non-string dict keys are sorted by their encoding, so keys do not depend on
``PYTHONHASHSEED``: another process computes the same key, which the shared L2 needs.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import enum
import hashlib
import math
import types
import uuid
from collections.abc import Callable, Mapping
from json.encoder import encode_basestring_ascii as _json_str
from pathlib import PurePath
from typing import Any

from pydantic import BaseModel

from onex_compose.capabilities.caching._model import MISSING, CacheKeyError

__all__ = ["canonical", "generate_cache_key"]


def _float(x: float) -> str:
    if math.isfinite(x):
        return float.__repr__(x)
    return "NaN" if x != x else ("Infinity" if x > 0 else "-Infinity")


def _qual(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _canon(obj: Any, out: list[str], active: set[int]) -> None:
    t = type(obj)
    if t is str:
        out.append(_json_str(obj))
    elif t is bool:
        out.append("true" if obj else "false")
    elif t is int:
        out.append(int.__repr__(obj))
    elif t is float:
        out.append(_float(obj))
    elif obj is None:
        out.append("null")
    elif t is list:
        _sequence(obj, "[", out, active)
    elif t is tuple:
        _sequence(obj, "!t[", out, active)
    elif isinstance(obj, enum.Enum):
        out.append(f"!e:{_qual(t)}:")
        _canon(obj.value, out, active)
    elif isinstance(obj, (dict, Mapping)):
        _enter(obj, active)
        items = list(obj.items())
        if all(type(k) is str for k, _ in items):
            items.sort(key=lambda kv: kv[0])
            out.append("{")
            for i, (k, v) in enumerate(items):
                if i:
                    out.append(",")
                out.append(_json_str(k))
                out.append(":")
                _canon(v, out, active)
            out.append("}")
        else:
            pairs = []
            for k, v in items:
                kb: list[str] = []
                _canon(k, kb, active)
                vb: list[str] = []
                _canon(v, vb, active)
                pairs.append(("".join(kb), "".join(vb)))
            pairs.sort()
            out.append("{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}")
        active.discard(id(obj))
    elif isinstance(obj, (set, frozenset)):
        _enter(obj, active)
        parts = []
        for item in obj:
            buf: list[str] = []
            _canon(item, buf, active)
            parts.append("".join(buf))
        parts.sort()
        out.append("!s[" + ",".join(parts) + "]")
        active.discard(id(obj))
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        out.append(f'!b"{bytes(obj).hex()}"')
    elif isinstance(obj, float):
        out.append(f"!f:{_qual(t)}:{_float(obj)}")
    elif isinstance(obj, int):
        out.append(f"!i:{_qual(t)}:{int.__repr__(obj)}")
    elif isinstance(obj, str):
        out.append(f"!str:{_qual(t)}:{_json_str(str(obj))}")
    elif isinstance(obj, (list, tuple)):
        if hasattr(obj, "_fields"):  # namedtuple
            _sequence(obj, f"!nt:{_qual(t)}[", out, active)
        else:
            _sequence(obj, f"!seq:{_qual(t)}[", out, active)
    elif isinstance(obj, (_dt.datetime, _dt.date, _dt.time)):
        out.append(f"!dt:{_qual(t)}:{obj.isoformat()}")
    elif isinstance(obj, (_dt.timedelta, decimal.Decimal, uuid.UUID, PurePath, complex, range)):
        out.append(f"!v:{_qual(t)}:{obj!s}")
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        _enter(obj, active)
        out.append(f"!d:{_qual(t)}{{")
        for i, f in enumerate(dataclasses.fields(obj)):
            if i:
                out.append(",")
            out.append(_json_str(f.name) + ":")
            _canon(getattr(obj, f.name), out, active)
        out.append("}")
        active.discard(id(obj))
    elif isinstance(obj, BaseModel):
        _enter(obj, active)
        out.append(f"!m:{_qual(t)}")
        _canon({k: getattr(obj, k) for k in type(obj).model_fields}, out, active)
        active.discard(id(obj))
    elif isinstance(obj, type):
        out.append(f"!type:{_qual(obj)}")
    elif isinstance(obj, (types.FunctionType, types.BuiltinFunctionType)):
        out.append(f"!fn:{getattr(obj, '__module__', None)}.{obj.__qualname__}")
    else:
        _fallback(obj, out, active)


def _sequence(obj: Any, head: str, out: list[str], active: set[int]) -> None:
    _enter(obj, active)
    out.append(head)
    for i, item in enumerate(obj):
        if i:
            out.append(",")
        _canon(item, out, active)
    out.append("]")
    active.discard(id(obj))


def _enter(obj: Any, active: set[int]) -> None:
    oid = id(obj)
    if oid in active:
        raise CacheKeyError(
            f"cannot build a cache key from self-referencing data (a {type(obj).__name__} "
            "contains itself); pass a key built from its identifying fields instead")
    active.add(oid)


def _fallback(obj: Any, out: list[str], active: set[int]) -> None:
    """Any other object: its class and its pickle state (``__reduce_ex__``), which is stable
    across processes for ordinary classes (``__dict__``/``__slots__`` values); else its repr
    when the class defines one; else an error asking for an explicit key."""
    t = type(obj)
    state: Any = MISSING
    try:
        reduced = obj.__reduce_ex__(4)
    except Exception:
        reduced = None
    if isinstance(reduced, tuple) and len(reduced) >= 2:
        args = reduced[1]
        st = reduced[2] if len(reduced) > 2 else None
        if isinstance(st, tuple) and len(st) == 2 and st[0] is None:
            st = st[1]  # (None, slots-dict)
        args = args[1:] if args and args[0] is t else args  # copyreg.__newobj__(cls, *args)
        state = (tuple(args), st)
    if state is not MISSING:
        _enter(obj, active)
        out.append(f"!o:{_qual(t)}")
        _canon(state, out, active)
        active.discard(id(obj))
        return
    if vars(object)["__repr__"] is not getattr(t, "__repr__", None):
        out.append(f"!r:{_qual(t)}:{_json_str(repr(obj))}")
        return
    raise CacheKeyError(
        f"cannot build a cache key from a {_qual(t)}: it has no picklable state and no repr; "
        "pass a key built from its identifying fields (for example generate_cache_key("
        "(obj.id, obj.version)))")


_SCALAR_TEXT: dict[type, Callable[[Any], str]] = {
    str: _json_str, int: int.__repr__, float: _float,
    bool: lambda b: "true" if b else "false", type(None): lambda _v: "null",
}


def _flat(data: dict[Any, Any]) -> str | None:
    """A flat dict of str keys and JSON scalars, as ``_canon`` writes it, or ``None``."""
    try:
        items = sorted(data.items())
    except TypeError:  # keys of mixed types
        return None
    parts = []
    for k, v in items:
        text = _SCALAR_TEXT.get(type(v))
        if text is None or type(k) is not str:
            return None
        parts.append(_json_str(k) + ":" + text(v))
    return "{" + ",".join(parts) + "}"


def canonical(data: Any) -> str:
    """The canonical text of ``data`` (what :func:`generate_cache_key` hashes).

    Example:
        >>> canonical({"b": [1, 2.5], "a": None})
        '{"a":null,"b":[1,2.5]}'
        >>> canonical({1: "x"}) != canonical({"1": "x"})
        True
    """
    if type(data) is dict:
        flat = _flat(data)  # the common case, ~2x faster than the general walk
        if flat is not None:
            return flat
    out: list[str] = []
    try:
        _canon(data, out, set())
    except RecursionError:
        raise CacheKeyError(
            "cannot build a cache key: the data is nested too deeply; pass a shorter key"
        ) from None
    return "".join(out)


def _call_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The key part for a decorated call's arguments.

    Positional scalar arguments (the common case) give their canonical text directly when it is
    short (``!t[1,"a"]``: it cannot clash with a 32-hex-digit hash); anything else is hashed.
    """
    if not kwargs:
        parts = []
        for a in args:
            text = _SCALAR_TEXT.get(type(a))
            if text is None:
                break
            parts.append(text(a))
        else:
            key = "!t[" + ",".join(parts) + "]"
            if len(key) <= 64:
                return key
    return generate_cache_key((args, kwargs))


def generate_cache_key(data: Any) -> str:
    """A stable 32-character key for ``data``: equal for equal data (whatever the dict order,
    in any process), different for different data.

    Works for JSON data and for what JSON cannot encode: tuples (distinct from lists), sets,
    bytes, non-string dict keys, enums, dates, decimals, UUIDs, paths, dataclasses, Pydantic
    models and ordinary objects (by class and state).

    Raises:
        CacheKeyError: self-referencing data, or an object with no state to describe it.

    Example:
        >>> generate_cache_key({"x": 1, "y": 2}) == generate_cache_key({"y": 2, "x": 1})
        True
        >>> generate_cache_key({1, 2}) == generate_cache_key(frozenset({2, 1}))
        True
        >>> len(generate_cache_key(b"bytes"))
        32
    """
    text = canonical(data)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()

