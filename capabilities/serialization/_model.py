"""The serialization capability's config model and errors."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from onex_compose.exceptions import OnexError

__all__ = ["DeserializationError", "PayloadTooLargeError", "SerializationConfig",
           "SerializationError"]

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
