"""Value codecs for the Redis backends of caching (L2 values) and event_bus (event payloads).

One place for what both capabilities had twice: the ``serializer`` config validator, the built-in
``json`` and ``pickle`` codecs, and the loader of a ``'module:object'`` codec.

``json`` is the default of both: it cannot run code while decoding. ``pickle`` stays available,
opt-in, for values JSON cannot carry; it runs code from the data it loads, so use it only with a
Redis that only trusted processes can write to.

Example:
    >>> codec("json", what="caching.serializer", error=TypeError).dumps({"a": [1, None]})
    b'{"a":[1,null]}'
    >>> check_serializer("pickle")
    'pickle'
"""

from __future__ import annotations

import importlib
import json
import pickle
from typing import Any, Protocol

__all__ = ["PICKLE_WARNING", "Codec", "JsonCodec", "PickleCodec", "check_serializer", "codec",
           "load_codec", "looks_pickled"]

PICKLE_WARNING = ("pickle runs code from the data it loads: use it only with a Redis that only "
                  "trusted processes can write to, else keep 'json'")


class Codec(Protocol):
    """What a serializer is: ``dumps(value) -> bytes | str`` and ``loads(bytes) -> value``."""

    def dumps(self, value: Any) -> bytes | str: ...

    def loads(self, data: bytes) -> Any: ...


class JsonCodec:
    """Compact JSON (``NaN`` and infinities allowed, as Python's ``json`` writes them)."""

    @staticmethod
    def dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":"), allow_nan=True).encode()

    @staticmethod
    def loads(data: bytes) -> Any:
        return json.loads(data)


class PickleCodec:
    """Pickle protocol 5; only for a Redis that only trusted processes can write to."""

    @staticmethod
    def dumps(value: Any) -> bytes:
        return pickle.dumps(value, protocol=5)

    @staticmethod
    def loads(data: bytes) -> Any:
        return pickle.loads(data)


def looks_pickled(data: Any) -> bool:
    """Whether ``data`` starts like a pickle (protocol 2 or later): an entry an older version
    wrote with the former ``pickle`` default.

    Example:
        >>> looks_pickled(pickle.dumps(1)), looks_pickled(b"1")
        (True, False)
    """
    return isinstance(data, bytes | bytearray) and len(data) > 1 and data[0] == 0x80 \
        and 2 <= data[1] <= 5


def check_serializer(value: str) -> str:
    """Validate a ``serializer`` config value: ``json``, ``pickle`` or ``module:object``."""
    if value in ("pickle", "json") or (":" in value and all(value.split(":", 1))):
        return value
    raise ValueError(
        f"serializer must be 'json', 'pickle' or 'module:object' (an object with dumps() and "
        f"loads()), got {value!r}")


def load_codec(spec: str, *, what: str, error: type[Exception]) -> Any:
    """Import a ``'module:object'`` serializer that has ``dumps(value)`` and ``loads(bytes)``.

    Args:
        spec: ``'module:object'`` (the object may be a module, a class or an instance).
        what: the config field, for messages (``"caching.serializer"``).
        error: the exception class to raise when it cannot be used.
    """
    module, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise error(
            f"{what} {spec!r} cannot be imported ({exc}); give 'module:object' where the object "
            "has dumps(value) -> bytes and loads(bytes) -> value") from None
    if not (callable(getattr(obj, "dumps", None)) and callable(getattr(obj, "loads", None))):
        raise error(f"{what} {spec!r} has no dumps()/loads(); give an object (or module) with "
                    "dumps(value) -> bytes and loads(bytes) -> value")
    return obj


def codec(spec: str, *, what: str, error: type[Exception]) -> Codec:
    """The codec named by a validated ``serializer`` value.

    Args:
        spec: ``json``, ``pickle`` or ``'module:object'``.
        what: the config field, for messages.
        error: raised when a ``'module:object'`` codec cannot be used.
    """
    if spec == "json":
        return JsonCodec()
    if spec == "pickle":
        return PickleCodec()
    return load_codec(spec, what=what, error=error)  # type: ignore[no-any-return]
