"""The ``logging`` capability: structured logging on loguru, correlation ids, scrubbing.

What a node gets:

* ``self.log``: a loguru logger **bound once per node** (at setup, not per call) with
  ``node_id``, ``node_type`` and ``capability`` (``None`` for the node's own code; a capability
  logs through ``bind_logger(node, "caching")``, also bound once, at its setup). Every record
  it emits also carries ``correlation_id``, and passes through the node's scrubber.
* correlation ids in the context variable ``onex_compose.capabilities._context.correlation_id``:
  it follows a call across ``await`` and into the tasks it creates, never leaks between
  concurrent requests, and is read by other capabilities (the event bus stamps it on every
  published event). ``with self.correlation():`` (or ``async with``, or as a decorator) sets one:
  the given id, else the one already in force, else a new uuid4. When ``process()`` is guarded,
  every call runs with a correlation id (``correlate_process``).
* scrubbing: in the record's extra data (bound values and keyword arguments), any key whose
  name contains one of ``scrub_keys`` (case-insensitive, ``-`` read as ``_``: ``password``,
  ``X-Api-Key``, ``db_password``...) has its value replaced by ``[REDACTED]``, recursively
  through mappings, lists and tuples (the caller's objects are never modified); in every string
  value *and in the message*, the project's one scrubber (``onex_compose._redact``, also used
  by errors, error_handling and health reasons) masks URL passwords, sensitive ``key=value``
  pairs and query parameters, bearer tokens, JWTs, card numbers and e-mail local parts. A secret
  interpolated into the message text under another shape cannot be recognised: log it as a
  keyword argument (``self.log.info("login", password=pw)``), never in the format string.

Output: loguru's handlers are global and belong to the application. By default this
capability adds none: records go wherever the application configured loguru (its default is
one stderr handler). ``enabled: true`` adds one handler for *this node's* records only, to
``sink`` (``stderr`` by default, ``stdout``, or a file path), at ``level``, as JSON lines when
``json: true``; it is removed by ``aclose()`` or when the node is garbage-collected.

The library's own records (those emitted by onex_compose's modules) are disabled by default, as
loguru advises for libraries (``logger.disable("onex_compose")``). An application turns them
on with ``from loguru import logger; logger.enable("onex_compose")``.

Why loguru's ``bind`` once and a patcher rather than ``logger.contextualize`` per call:
``bind`` allocates a logger (~1 µs), so it is done once per node; the correlation id is read
from the context variable by the patcher only when a record is actually emitted, so a request
that logs nothing pays nothing for it.

Example:
    >>> from onex_compose.capabilities._log import logger
    >>> from onex_compose import NodeCompute, compose
    >>> node = compose(NodeCompute, ["logging"])(node_id="n1")
    >>> lines = []
    >>> sink = logger.add(lines.append, format="{extra[node_id]} {extra[correlation_id]} "
    ...                   "{message} {extra[password]}")
    >>> with node.correlation("req-42"):
    ...     node.log.info("Authorization: Bearer abc.def", password="hunter2")
    >>> logger.remove(sink)
    >>> lines[0].strip()
    'n1 req-42 Authorization: Bearer [REDACTED] [REDACTED]'
"""

from __future__ import annotations

import functools
import inspect
import random
import sys
import threading
import warnings
import weakref
from collections.abc import Awaitable, Callable, Mapping
from contextvars import Token
from typing import Any, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from onex_compose import _redact, coerce_config, facility, has_capability
from onex_compose.capabilities._context import correlation_id, principal
from onex_compose.capabilities._log import base_logger, logger

__all__ = [
    "DEFAULT_SCRUB_KEYS",
    "REDACTED",
    "Correlation",
    "LoggingConfig",
    "LoggingProtocol",
    "MixinLogging",
    "Scrubber",
    "bind_logger",
    "current_correlation_id",
    "new_correlation_id",
]

REDACTED = "[REDACTED]"
DEFAULT_SCRUB_KEYS: tuple[str, ...] = _redact.DEFAULT_KEYS
"""Key fragments whose values are scrubbed (a key matches when it contains one)."""

_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
F = TypeVar("F", bound=Callable[..., Any])

# -- correlation ids --------------------------------------------------------------------------

_getrandbits = random.getrandbits
_VERSION_MASK = ~(0xF000 << 64) & ~(0xC << 60)
_VERSION_BITS = (0x4000 << 64) | (0x8 << 60)


def new_correlation_id() -> str:
    """A new random correlation id: a version-4 UUID as 32 hex digits.

    Built from ``random.getrandbits`` (reseeded in forked children) rather than
    ``uuid.uuid4()``, which reads ``os.urandom`` and costs ~2 µs: correlation ids must be
    unique, not unpredictable.

    Example:
        >>> import uuid
        >>> uuid.UUID(hex=new_correlation_id()).version
        4
    """
    return f"{(_getrandbits(128) & _VERSION_MASK) | _VERSION_BITS:032x}"


def current_correlation_id() -> str | None:
    """The correlation id in force in this context (``None`` when there is none)."""
    return correlation_id.get()


class Correlation:
    """Sets the correlation id for a block: a context manager (sync or async) and a decorator.

    Args:
        id: the id to use; when ``None``, the id already in force is kept, and a new uuid4
            is generated when there is none.

    Entering returns the id in force. As a decorator, each call of the decorated function
    (sync or async) runs under its own ``Correlation(id)``.

    Example:
        >>> with Correlation("abc") as cid:
        ...     cid, current_correlation_id()
        ('abc', 'abc')
        >>> current_correlation_id() is None
        True
        >>> @Correlation()
        ... def handler():
        ...     return current_correlation_id()
        >>> handler() != handler()
        True
    """

    __slots__ = ("_tokens", "id")

    def __init__(self, id: str | None = None) -> None:
        if id is not None and (not isinstance(id, str) or not id):
            raise TypeError(f"a correlation id must be a non-empty string, got {id!r}")
        self.id = id
        self._tokens: list[Token[str | None]] = []

    def __enter__(self) -> str:
        cid = self.id or correlation_id.get() or new_correlation_id()
        self._tokens.append(correlation_id.set(cid))
        return cid

    def __exit__(self, *exc_info: object) -> None:
        correlation_id.reset(self._tokens.pop())

    async def __aenter__(self) -> str:
        return self.__enter__()

    async def __aexit__(self, *exc_info: object) -> None:
        self.__exit__()

    def __call__(self, func: F) -> F:
        cid = self.id
        if inspect.iscoroutinefunction(func):
            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with Correlation(cid):
                    return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with Correlation(cid):
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"Correlation({self.id!r})"


# -- scrubbing --------------------------------------------------------------------------------


class Scrubber:
    """A loguru patcher: scrubs a record's extra data and message, adds ``correlation_id`` (and
    ``actor``, the current principal's subject, while an authenticated call runs).

    The rules are those of the project's one scrubber (:class:`onex_compose._redact.Redactor`),
    with ``keys`` as its key fragments and ``[REDACTED]`` as its mask.

    Args:
        keys: key fragments whose values are replaced by ``[REDACTED]``.

    Example:
        >>> scrub = Scrubber(["password"])
        >>> scrub.value({"user": "ann", "db_password": "x", "nested": [{"Password": 1}]})
        {'user': 'ann', 'db_password': '[REDACTED]', 'nested': [{'Password': '[REDACTED]'}]}
        >>> scrub.value("postgresql://app:s3cret@db/prod")
        'postgresql://app:[REDACTED]@db/prod'
    """

    __slots__ = ("_redactor", "keys")

    def __init__(self, keys: Any = DEFAULT_SCRUB_KEYS) -> None:
        self._redactor = _redact.Redactor(keys, mask=REDACTED)
        self.keys = self._redactor.keys

    def sensitive(self, key: Any) -> bool:
        """Whether values under ``key`` are scrubbed."""
        return self._redactor.sensitive(key)

    def value(self, value: Any, depth: int = 0) -> Any:
        """A scrubbed copy of ``value`` (the same object when nothing needed scrubbing)."""
        return self._redactor.value(value, depth)

    def __call__(self, record: Any) -> None:
        redactor = self._redactor
        extra = record["extra"]
        for key, value in extra.items():
            if redactor.sensitive(key):
                extra[key] = REDACTED
            elif not isinstance(value, int | float | bool | type(None)):
                extra[key] = redactor.value(value)
        if "correlation_id" not in extra:
            extra["correlation_id"] = correlation_id.get()
        reader = _span_reader
        if reader is not None and "trace_id" not in extra:
            ids = reader()
            if ids is not None:
                extra["trace_id"], extra["span_id"] = ids
        if "actor" not in extra:
            who = principal.get()  # set by authentication for the duration of a call
            if who is not None:
                extra["actor"] = who.subject
        message = record["message"]
        if message:
            record["message"] = redactor.text(message)
        _emitter.owner = self  # read by the node's own handler filter, in this same call


_emitter = threading.local()

# set by the tracing capability when the first enabled tracer is built: returns the current
# span's (trace_id, span_id) as hex, or None; read by the patcher only when a record is emitted
_span_reader: Callable[[], tuple[str, str] | None] | None = None


def set_span_reader(reader: Callable[[], tuple[str, str] | None] | None) -> None:
    """Install the function the patcher calls to stamp ``trace_id`` / ``span_id`` on records.

    The tracing capability installs it (once per process) when it builds an enabled tracer, so
    the logging capability never imports OpenTelemetry. ``None`` removes it.
    """
    global _span_reader
    _span_reader = reader


# -- configuration ----------------------------------------------------------------------------


with warnings.catch_warnings():
    # the field is called ``json`` as in the design; it shadows pydantic's deprecated
    # ``BaseModel.json()`` method, which nobody calls on this model
    warnings.filterwarnings("ignore", message='Field name "json"', category=UserWarning)

    class LoggingConfig(BaseModel):
        """Configuration of the ``logging`` capability (the ``logging`` subcontract).

        Attributes:
            enabled: add a loguru handler for this node's records (otherwise records go only to
                the handlers the application configured).
            sink: where that handler writes: ``stderr``, ``stdout`` or a file path.
            level: the handler's minimum level (``TRACE`` ... ``CRITICAL``, or a custom level
                registered with loguru).
            json: write JSON lines (loguru's ``serialize=True``) instead of text.
            scrub_keys: key fragments whose values are scrubbed from the extra data.
            correlate_process: when ``process()`` is guarded, run every call with a correlation
                id (the caller's, or a new one).

        Example:
            >>> LoggingConfig(level="debug").level
            'DEBUG'
        """

        model_config = ConfigDict(extra="forbid", frozen=True)

        enabled: bool = False
        sink: str = "stderr"
        level: str = "INFO"
        json: bool = False  # type: ignore[assignment]  # shadows BaseModel.json (deprecated)
        scrub_keys: list[str] = Field(default_factory=lambda: list(DEFAULT_SCRUB_KEYS))
        correlate_process: bool = True

        @field_validator("level")
        @classmethod
        def _check_level(cls, value: str) -> str:
            name = value.upper()
            if name in _LEVELS:
                return name
            try:
                logger.level(value)
            except ValueError:
                raise ValueError(
                    f"unknown log level {value!r}; use one of {', '.join(_LEVELS)} or a level "
                    "registered with loguru's logger.level(name, no=...)") from None
            return value

        @field_validator("sink")
        @classmethod
        def _check_sink(cls, value: str) -> str:
            if not value.strip():
                raise ValueError(
                    "sink must be 'stderr', 'stdout' or a file path, got an empty string")
            return value

        @field_validator("scrub_keys")
        @classmethod
        def _check_keys(cls, value: list[str]) -> list[str]:
            bad = [k for k in value if not k.strip()]
            if bad:
                raise ValueError("scrub_keys entries must be non-empty strings")
            return value


@runtime_checkable
class LoggingProtocol(Protocol):
    """What a node with the ``logging`` capability offers (``logging_protocol``)."""

    @property
    def log(self) -> Any: ...

    def correlation(self, id: str | None = None) -> Correlation: ...


# -- binding ----------------------------------------------------------------------------------


def _node_type(node: Any) -> str | None:
    node_type = getattr(type(node), "node_type", None)
    return None if node_type is None else str(getattr(node_type, "value", node_type))


def _make_logger(node: Any, scrubber: Scrubber, capability: str | None) -> Any:
    return base_logger.patch(scrubber).bind(
        node_id=getattr(node, "node_id", None), node_type=_node_type(node), capability=capability)


_default_scrubber = Scrubber()


def bind_logger(node: Any, capability: str) -> Any:
    """A loguru logger for a capability's records about ``node``; call it once, at setup.

    With the ``logging`` capability it is ``node.log`` bound with ``capability`` (the node's
    scrubbing and correlation apply); without it, a logger with the same fields, the default
    scrub keys and the correlation id.

    Example:
        >>> from onex_compose import NodeCompute, compose
        >>> node = compose(NodeCompute, ["logging"])(node_id="n7")
        >>> log = bind_logger(node, "caching")
        >>> records = []
        >>> sink = logger.add(lambda m: records.append(m.record["extra"]), format="{message}")
        >>> log.warning("L2 down")
        >>> logger.remove(sink)
        >>> records[0]["node_id"], records[0]["capability"]
        ('n7', 'caching')
    """
    if has_capability(node, "logging"):
        return node.log.bind(capability=capability)
    return _make_logger(node, _default_scrubber, capability)


def _remove_handler(handler_id: int) -> None:
    try:
        logger.remove(handler_id)
    except ValueError:
        pass  # removed already (logger.remove() of everything by the application)


class _Sink:
    """The node's own handler: its id and the finalizer that removes it with the node."""

    __slots__ = ("finalizer", "handler_id")

    def __init__(self, node: Any, config: LoggingConfig, scrubber: Scrubber) -> None:
        node_id = getattr(node, "node_id", None)

        def mine(record: Any) -> bool:
            # records of this node's logger only: its patcher (this scrubber) just ran; two
            # nodes with one node_id (a pickled copy) do not see each other's records
            return (getattr(_emitter, "owner", None) is scrubber
                    and record["extra"].get("node_id") == node_id)

        target: Any = {"stderr": sys.stderr, "stdout": sys.stdout}.get(config.sink, config.sink)
        fmt = ("{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <8} | {extra[node_id]} | "
               "{extra[correlation_id]} | {name}:{function}:{line} - {message}")
        self.handler_id = logger.add(
            target, level=config.level, serialize=config.json, format=fmt,
            filter=mine)
        self.finalizer = weakref.finalize(node, _remove_handler, self.handler_id)

    def close(self) -> None:
        self.finalizer()  # removes the handler once; later calls do nothing


# -- the mixin --------------------------------------------------------------------------------


class MixinLogging:
    """Structured logging for a node: ``self.log`` and ``self.correlation()``.

    Capability ``logging`` (provides ``logging_protocol``, which error_handling requires);
    requires nothing. Configured by the node contract's ``logging`` subcontract
    (:class:`LoggingConfig`).

    Example:
        >>> import asyncio
        >>> from onex_compose.capabilities._log import logger
        >>> from onex_compose import NodeCompute
        >>> class Service(NodeCompute, MixinLogging):
        ...     async def handle(self, item):
        ...         self.log.info("handling {}", item)
        >>> node = Service(node_id="svc")
        >>> seen = []
        >>> sink = logger.add(lambda m: seen.append(m.record["extra"]["correlation_id"]))
        >>> async def main():
        ...     async def one(i):
        ...         with node.correlation(f"req-{i}"):
        ...             await asyncio.sleep(0)
        ...             await node.handle(i)
        ...     await asyncio.gather(*(one(i) for i in range(3)))
        >>> asyncio.run(main())
        >>> logger.remove(sink)
        >>> sorted(seen)
        ['req-0', 'req-1', 'req-2']
    """

    __onex_capability__ = "logging"
    __slots__ = ()

    def setup_logging(self, config: LoggingConfig | Mapping[str, Any] | None = None) -> None:
        """Bind ``self.log`` (once) and add the node's handler when ``enabled``."""
        cfg = coerce_config(LoggingConfig, config, "logging")
        # getattr/setattr, never self.__dict__: touching __dict__ slows every later attribute
        # read on the node (CPython materialises the instance dict)
        old = getattr(self, "_onex_log_sink", None)
        if isinstance(old, _Sink):
            old.close()
        scrubber = Scrubber(cfg.scrub_keys)
        setattr(self, "_onex_log_config", cfg)  # noqa: B010
        setattr(self, "log", _make_logger(self, scrubber, None))  # noqa: B010
        setattr(self, "_onex_log_sink", _Sink(self, cfg, scrubber) if cfg.enabled else None)  # noqa: B010

    @facility
    def log(self) -> Any:
        """The node's bound loguru logger (a default one when ``setup_logging`` never ran)."""
        return _make_logger(self, _default_scrubber, None)

    def correlation(self, id: str | None = None) -> Correlation:
        """Set the correlation id for a block (``with``/``async with``) or each call (decorator).

        Args:
            id: the id; ``None`` keeps the one in force, or generates a uuid4 when none is.
        """
        return Correlation(id)

    async def close_logging(self) -> None:
        """Remove the node's own handler, if it added one (idempotent)."""
        sink = getattr(self, "_onex_log_sink", None)
        if isinstance(sink, _Sink):
            sink.close()

    def _guard_logging(self, call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        """Wrap ``process()``: every call runs with a correlation id."""
        node = self

        async def correlated(*args: Any, **kwargs: Any) -> Any:
            if correlation_id.get() is not None:
                return await call(*args, **kwargs)
            cfg = getattr(node, "_onex_log_config", None)
            if cfg is not None and not cfg.correlate_process:
                return await call(*args, **kwargs)
            token = correlation_id.set(new_correlation_id())
            try:
                return await call(*args, **kwargs)
            finally:
                correlation_id.reset(token)

        correlated.__wrapped__ = call  # type: ignore[attr-defined]
        return correlated

    def _guard_sync_logging(self, call: Callable[..., Any]) -> Callable[..., Any]:
        """The sync twin of :meth:`_guard_logging`, for a plain ``def process``."""
        node = self

        def correlated_sync(*args: Any, **kwargs: Any) -> Any:
            if correlation_id.get() is not None:
                return call(*args, **kwargs)
            cfg = getattr(node, "_onex_log_config", None)
            if cfg is not None and not cfg.correlate_process:
                return call(*args, **kwargs)
            token = correlation_id.set(new_correlation_id())
            try:
                return call(*args, **kwargs)
            finally:
                correlation_id.reset(token)

        correlated_sync.__wrapped__ = call  # type: ignore[attr-defined]
        return correlated_sync
