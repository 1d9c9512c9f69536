"""The ``Tracing`` facility (``node.tracer``) and the ``process()`` span guard.

This module imports nothing from OpenTelemetry: :class:`Tracing` imports ``_otel`` when (and
only when) it is built with ``enabled: true``. A disabled facility answers every call without
OpenTelemetry (spans are :data:`NO_SPAN`, ``inject`` returns the carrier unchanged, ids are
``None``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import weakref
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import Any, TypeVar, cast

from onex_compose.capabilities._context import correlation_id
from onex_compose.capabilities._log import logger
from onex_compose.capabilities.tracing._model import SPAN_KINDS, TracingConfig
from onex_compose.exceptions import ConfigurationError

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

# (kind, the OTel context continue_from attached): the process span directly under it takes
# that kind (SERVER/CONSUMER) instead of INTERNAL
_incoming: ContextVar[tuple[Any, Any] | None] = ContextVar("onex_trace_incoming", default=None)


class _NoSpan:
    """The span a disabled tracer hands out: accepts every call, records nothing.

    Example:
        >>> NO_SPAN.set_attribute("k", 1); NO_SPAN.is_recording()
        False
    """

    __slots__ = ()

    def is_recording(self) -> bool:
        return False

    def set_attribute(self, key: str, value: Any) -> None:
        return None

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        return None

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None,
                  timestamp: int | None = None) -> None:
        return None

    def record_exception(self, exception: BaseException, *args: Any, **kwargs: Any) -> None:
        return None

    def set_status(self, *args: Any, **kwargs: Any) -> None:
        return None

    def update_name(self, name: str) -> None:
        return None

    def __repr__(self) -> str:
        return "<no span (tracing disabled)>"


NO_SPAN = _NoSpan()


class _NoScope:
    """``span()`` / ``continue_from()`` of a disabled tracer: a no-op (a)sync context manager."""

    __slots__ = ()

    def __enter__(self) -> Any:
        return NO_SPAN

    def __exit__(self, *exc: object) -> None:
        return None

    async def __aenter__(self) -> Any:
        return NO_SPAN

    async def __aexit__(self, *exc: object) -> None:
        return None


_NO_SCOPE = _NoScope()


class SpanScope:
    """A span that is current for a block: ``with`` and ``async with`` (what ``span()`` returns).

    Entering starts the span and makes it current (it is the value bound by ``as``); leaving
    ends it. An exception gives it status ERROR and one ``exception`` event (message scrubbed);
    ``asyncio.CancelledError`` is recorded as the event ``cancelled`` instead. One scope object
    can be entered once at a time.
    """

    __slots__ = ("_parent", "_state", "_tracing", "attributes", "kind", "name")

    def __init__(self, tracing: Tracing, name: str, kind: Any, attributes: Any,
                 parent: Any) -> None:
        self._tracing = tracing
        self.name = name
        self.kind = kind
        self.attributes = attributes
        self._parent = parent
        self._state: tuple[Any, Any, Any] | None = None

    def __enter__(self) -> Any:
        tr = self._tracing
        otel = tr._otel
        span = tr._start(self.name, self._parent, self.kind, self.attributes)
        token = otel.attach(otel.set_span_in_context(span, self._parent))
        self._state = (span, token, None)
        return span

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        state = self._state
        if state is None:
            return
        self._state = None
        span, token, _ = state
        try:
            if exc is not None:
                self._tracing._failed(span, exc)
        finally:
            self._tracing._otel.detach(token)
            span.end()

    async def __aenter__(self) -> Any:
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.__exit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        return f"<SpanScope {self.name!r} kind={getattr(self.kind, 'name', self.kind)}>"


class _Continued:
    """What ``continue_from()`` returns: makes the extracted context current for a block."""

    __slots__ = ("_ctx", "_kind", "_tokens", "_tracing")

    def __init__(self, tracing: Tracing, ctx: Any, kind: Any) -> None:
        self._tracing = tracing
        self._ctx = ctx
        self._kind = kind
        self._tokens: list[tuple[Any, Any]] = []

    def __enter__(self) -> str | None:
        otel = self._tracing._otel
        ctx = self._ctx
        self._tokens.append((otel.attach(ctx), _incoming.set((self._kind, ctx))))
        parent = otel.get_current_span(ctx).get_span_context()
        return f"{parent.trace_id:032x}" if parent.is_valid else None

    def __exit__(self, *exc: object) -> None:
        token, incoming = self._tokens.pop()
        _incoming.reset(incoming)
        self._tracing._otel.detach(token)

    async def __aenter__(self) -> str | None:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__()


def _no_count(value: float = 1) -> None:
    return None


class Tracing:
    """The ``node.tracer`` facility: spans, W3C propagation, the node's own TracerProvider.

    Args:
        config: a :class:`TracingConfig` (or a mapping, or ``None`` for defaults).
        service_name: resource ``service.name`` when the config has none (the node's class).
        instance_id: resource ``service.instance.id`` (the node id).
        node_type: the node type, for the process span's ``onex.node_type`` attribute.
        metrics: the node's metrics facility (``bind_counter``), or ``None``.

    Raises:
        ConfigurationError: tracing is enabled but the OpenTelemetry SDK is not installed; an
            unknown propagator or a bad endpoint (from the environment); a provider that cannot
            be loaded.

    Example:
        >>> tracer = Tracing({"exporter": "memory", "processor": "simple"},
        ...                  service_name="pricing")
        >>> with tracer.span("lookup", kind="client", attributes={"sku": "A1"}) as span:
        ...     carrier = tracer.inject({})
        ...     tracer.current_span_id() == f"{span.get_span_context().span_id:016x}"
        True
        >>> version, trace_id, span_id, flags = carrier["traceparent"].split("-")
        >>> version, len(trace_id), len(span_id), int(flags, 16) & 1     # sampled
        ('00', 32, 16, 1)
        >>> [s.name for s in tracer.exporter.get_finished_spans()]
        ['lookup']
        >>> Tracing({"enabled": False}).inject({})
        {}
    """

    def __init__(self, config: TracingConfig | Mapping[str, Any] | None = None, *,
                 service_name: str | None = None, instance_id: str | None = None,
                 node_type: str | None = None, metrics: Any = None) -> None:
        from onex_compose import coerce_config

        cfg: TracingConfig = coerce_config(TracingConfig, config, "tracing")
        self.config = cfg
        self.enabled = cfg.enabled
        self.service_name = cfg.service_name or service_name or "onex-node"
        self.instance_id = instance_id
        self.node_type = node_type
        self._args = (service_name, instance_id, node_type)
        self._instrument = frozenset(cfg.instrument) if cfg.enabled else frozenset()
        self._lock = threading.Lock()
        self._outage: str | None = None
        self._export_errors = 0
        self._otel: Any = None
        self._backend: Any = None
        self._finalizer: Any = None
        self._count_error: Callable[..., Any] = _no_count
        if not cfg.enabled:
            return
        from importlib.util import find_spec

        if find_spec("opentelemetry") is None or find_spec("opentelemetry.sdk") is None:
            raise ConfigurationError(
                "tracing is enabled but the OpenTelemetry SDK is not installed: "
                "pip install 'onex-compose[otel]' (or set tracing.enabled: false)")
        from onex_compose.capabilities.tracing import _otel

        self._otel = _otel
        bind = getattr(metrics, "bind_counter", None)
        if callable(bind):
            sampled = bind("tracing_spans_total", {"sampled": "true"})
            unsampled = bind("tracing_spans_total", {"sampled": "false"})
            self._count_error = bind("tracing_export_errors_total")
        else:
            sampled = unsampled = _no_count
        backend = _otel.Backend(cfg, service_name=self.service_name, instance_id=instance_id,
                                counters=(sampled, unsampled), on_export=self._exported)
        self._backend = backend
        if backend.owns_provider:
            self._finalizer = weakref.finalize(self, _otel.shutdown_provider, backend.provider)
        self._tracer = backend.tracer
        self._start_span = backend.tracer.start_span
        _install_log_reader(_otel)

    # -- state ------------------------------------------------------------------------------

    @property
    def provider(self) -> Any:
        """The node's ``TracerProvider`` (``None`` when disabled): its own, never the global."""
        return None if self._backend is None else self._backend.provider

    @property
    def exporter(self) -> Any:
        """The ``InMemorySpanExporter`` when ``exporter: memory`` (else the configured exporter
        object, ``None`` for ``none``, an injected provider, or when disabled)."""
        backend = self._backend
        return None if backend is None else backend.exporter

    @property
    def tracer(self) -> Any:
        """The OpenTelemetry ``Tracer`` of the node's provider (``None`` when disabled)."""
        return None if self._backend is None else self._tracer

    def instruments(self, capability: str) -> bool:
        """Whether ``capability`` should emit spans and events (enabled and listed in
        ``instrument``). Capabilities call it once, at their setup.

        Example:
            >>> Tracing({"instrument": ["retry"]}).instruments("retry")
            True
            >>> Tracing({"enabled": False}).instruments("retry")
            False
        """
        return capability in self._instrument

    def for_capability(self, capability: str) -> Tracing | None:
        """``self`` when :meth:`instruments` says yes, else ``None`` (what a capability keeps)."""
        return self if capability in self._instrument else None

    # -- spans ------------------------------------------------------------------------------

    def span(self, name: str, *, kind: str = "internal",
             attributes: Mapping[str, Any] | None = None,
             headers: Mapping[str, str] | None = None) -> Any:
        """A span current for a ``with`` / ``async with`` block (the span is bound by ``as``).

        Args:
            name: the span name.
            kind: ``internal``, ``server``, ``client``, ``producer`` or ``consumer``.
            attributes: span attributes (strings longer than ``attribute_value_max_length``
                are truncated).
            headers: when given, the parent is the context these transport headers carry
                (``traceparent``...), not the current span: a missing or invalid one starts a
                new trace. Consumers of messages use it.

        Raises:
            ValueError: an unknown ``kind``.
        """
        if self._otel is None:
            if kind not in SPAN_KINDS:
                raise ValueError(f"unknown span kind {kind!r}; use one of "
                                 f"{', '.join(SPAN_KINDS)}")
            return _NO_SCOPE
        parent = None if headers is None else self._backend.extract(headers)
        return SpanScope(self, name, self._otel.span_kind(kind),
                         dict(attributes) if attributes else None, parent)

    def traced(self, name: str | None = None, *, kind: str = "internal",
               attributes: Mapping[str, Any] | None = None) -> Callable[[F], F]:
        """Decorate a function (sync or async) so each call runs in its own span.

        Args:
            name: the span name (default: the function's qualified name).

        Example:
            >>> tracer = Tracing({"exporter": "memory", "processor": "simple"})
            >>> @tracer.traced("load")
            ... def load(key):
            ...     return key.upper()
            >>> load("a"), [s.name for s in tracer.exporter.get_finished_spans()]
            ('A', ['load'])
        """
        if kind not in SPAN_KINDS:
            raise ValueError(f"unknown span kind {kind!r}; use one of {', '.join(SPAN_KINDS)}")

        def decorate(func: F) -> F:
            span_name: str = name or str(getattr(func, "__qualname__", repr(func)))
            if inspect.iscoroutinefunction(func):
                @functools.wraps(func)
                async def async_traced(*args: Any, **kwargs: Any) -> Any:
                    with self.span(span_name, kind=kind, attributes=attributes):
                        return await func(*args, **kwargs)

                return cast(F, async_traced)

            @functools.wraps(func)
            def traced_call(*args: Any, **kwargs: Any) -> Any:
                with self.span(span_name, kind=kind, attributes=attributes):
                    return func(*args, **kwargs)

            return cast(F, traced_call)

        return decorate

    def start_span(self, name: str, *, kind: str = "internal",
                   attributes: Mapping[str, Any] | None = None) -> Any:
        """Start a span that is *not* made current (end it with ``span.end()``): for work
        that is not a block, such as an L2 round trip measured from two callbacks."""
        if self._otel is None:
            return NO_SPAN
        return self._start(name, None, self._otel.span_kind(kind), attributes)

    def _start(self, name: str, parent: Any, kind: Any, attributes: Any) -> Any:
        return self._start_span(name, parent, kind, attributes)

    def _failed(self, span: Any, exc: BaseException) -> None:
        if isinstance(exc, asyncio.CancelledError):
            span.add_event("cancelled")
            return
        self._otel.record_error(span, exc, self.config.record_exceptions,
                                self.config.attribute_value_max_length)

    # -- the current span -------------------------------------------------------------------

    def current_span(self) -> Any:
        """The current span (OpenTelemetry's ``INVALID_SPAN`` when none; :data:`NO_SPAN` when
        disabled)."""
        if self._otel is None:
            return NO_SPAN
        return self._otel.get_current_span()

    def current_trace_id(self) -> str | None:
        """The current trace id as 32 hex digits, or ``None`` without a current span."""
        if self._otel is None:
            return None
        ctx = self._otel.get_current_span().get_span_context()
        return f"{ctx.trace_id:032x}" if ctx.is_valid else None

    def current_span_id(self) -> str | None:
        """The current span id as 16 hex digits, or ``None`` without a current span."""
        if self._otel is None:
            return None
        ctx = self._otel.get_current_span().get_span_context()
        return f"{ctx.span_id:016x}" if ctx.is_valid else None

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None) -> None:
        """Add an event to the current span; a no-op without a recording one (or disabled).

        This is what other capabilities call on their hot paths (``retry.attempt``,
        ``circuit_breaker.state_change``...): one context read when nothing records.
        """
        otel = self._otel
        if otel is None:
            return
        span = otel.get_current_span()
        if span.is_recording():
            span.add_event(name, attributes)

    def set_attribute(self, key: str, value: Any) -> None:
        """Set an attribute on the current span; a no-op without a recording one."""
        otel = self._otel
        if otel is None:
            return
        span = otel.get_current_span()
        if span.is_recording():
            span.set_attribute(key, value)

    # -- propagation ------------------------------------------------------------------------

    def inject(self, carrier: dict[str, str] | None = None) -> dict[str, str]:
        """Write the current context into ``carrier`` (``traceparent``, plus ``tracestate`` /
        ``baggage`` when present) and return it. An unsampled context is propagated too (flags
        ``00``). Without a current span (or disabled) the carrier is returned unchanged.

        Example:
            >>> Tracing().inject({"x": "1"})       # no current span
            {'x': '1'}
        """
        if carrier is None:
            carrier = {}
        if self._otel is None:
            return carrier
        return cast(dict[str, str], self._backend.inject(carrier))

    def continue_from(self, headers: Mapping[str, str] | None, *, kind: str = "server") -> Any:
        """Make the context carried by transport ``headers`` current for a block (``with`` or
        ``async with``; entering returns the remote trace id or ``None``).

        A ``process()`` call directly inside becomes a child of the remote span, with span
        kind ``kind`` (``server`` or ``consumer``). A missing or invalid ``traceparent`` raises
        nothing: the next span starts a new trace.

        Example:
            >>> tracer = Tracing({"exporter": "memory", "processor": "simple"})
            >>> tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            >>> with tracer.continue_from({"traceparent": tp}) as trace_id:
            ...     with tracer.span("work"):
            ...         tracer.current_trace_id() == trace_id
            True
        """
        if kind not in ("server", "consumer", "internal"):
            raise ValueError(f"continue_from kind must be 'server' or 'consumer', got {kind!r}")
        if self._otel is None:
            return _NO_SCOPE
        return _Continued(self, self._backend.extract(headers), self._otel.span_kind(kind))

    # -- export -----------------------------------------------------------------------------

    async def force_flush(self, timeout: float | None = None) -> bool:
        """Export every ended span now (in a worker thread); ``False`` if ``timeout`` (default
        ``otlp_timeout``) passed first."""
        backend = self._backend
        if backend is None:
            return True
        limit = self.config.otlp_timeout if timeout is None else timeout
        return bool(await asyncio.to_thread(backend.force_flush, limit))

    def _exported(self, ok: bool, reason: str | None) -> None:
        """The exporter's outcome (any thread): count failures, log once per outage."""
        if ok:
            if self._outage is not None:
                with self._lock:
                    was, self._outage = self._outage, None
                if was is not None:
                    logger.info("tracing[{}]: exporting spans again", self.service_name)
            return
        self._count_error()
        with self._lock:
            self._export_errors += 1
            first = self._outage is None
            self._outage = reason or "export failed"
        if first:
            logger.warning("tracing[{}]: cannot export spans ({}); spans are dropped until the "
                           "exporter recovers (counted in tracing_export_errors_total)",
                           self.service_name, reason)

    def health(self) -> dict[str, Any]:
        """``healthy``, or ``degraded`` while exports fail (registered as the ``tracing`` check
        when health_check is composed).

        Example:
            >>> Tracing({"enabled": False}).health()["status"]
            'healthy'
        """
        report: dict[str, Any] = {"status": "healthy", "enabled": self.enabled,
                                  "exporter": self.config.exporter,
                                  "export_errors": self._export_errors}
        outage = self._outage
        if outage is not None:
            report["status"] = "degraded"
            report["reason"] = f"span export failing: {outage}"
        return report

    async def aclose(self) -> None:
        """Flush and shut down the provider this facility built (an injected provider is
        left alone); idempotent. Spans ended before it are exported."""
        backend = self._backend
        if backend is None:
            return
        if backend.owns_provider:
            finalizer = self._finalizer
            if finalizer is not None and finalizer.alive:
                await asyncio.to_thread(finalizer)
        else:
            await self.force_flush()

    def __reduce__(self) -> tuple[Any, ...]:
        service_name, instance_id, node_type = self._args
        return (_rebuild, (self.config, service_name, instance_id, node_type))

    def __repr__(self) -> str:
        if not self.enabled:
            return "<Tracing disabled>"
        return (f"<Tracing service={self.service_name!r} sampler={self.config.sampler}"
                f"({self.config.ratio}) exporter={self.config.exporter} "
                f"processor={self.config.processor}>")

    # -- the process() guard ----------------------------------------------------------------

    def process_guard(self, node: Any, call: Callable[..., Awaitable[T]]
                      ) -> Callable[..., Awaitable[T]]:
        """Wrap an async ``process()`` in the process span (see the mixin's guard)."""
        state = _GuardState(self, node)

        @functools.wraps(call)
        async def traced_process(*args: Any, **kwargs: Any) -> T:
            st = state
            if node.tracer is not st.tracing:
                st = state.rebind(node.tracer)
            if not st.on:
                return await call(*args, **kwargs)
            span, token, ctoken = st.enter()
            try:
                return await call(*args, **kwargs)
            except BaseException as exc:
                st.failed(span, exc)
                raise
            finally:
                st.leave(span, token, ctoken)

        return traced_process

    def process_guard_sync(self, node: Any, call: Callable[..., T]) -> Callable[..., T]:
        """The sync twin of :meth:`process_guard`, for a plain ``def process``."""
        state = _GuardState(self, node)

        @functools.wraps(call)
        def traced_process_sync(*args: Any, **kwargs: Any) -> T:
            st = state
            if node.tracer is not st.tracing:
                st = state.rebind(node.tracer)
            if not st.on:
                return call(*args, **kwargs)
            span, token, ctoken = st.enter()
            try:
                return call(*args, **kwargs)
            except BaseException as exc:
                st.failed(span, exc)
                raise
            finally:
                st.leave(span, token, ctoken)

        return traced_process_sync


class _GuardState:
    """What the process guard binds once: the start function, the span name, the static
    attributes, the context functions (rebound when ``node.tracer`` is replaced)."""

    __slots__ = ("attach", "attrs", "corr", "detach", "enter", "failed", "get_current",
                 "internal", "leave", "name", "node", "on", "set_in", "start", "tracing")

    def __init__(self, tracing: Any, node: Any) -> None:
        self.node = node
        self._bind(tracing)

    def rebind(self, tracing: Any) -> _GuardState:
        self._bind(tracing)
        return self

    def _bind(self, tracing: Any) -> None:
        self.tracing = tracing
        otel: Any = getattr(tracing, "_otel", None)
        cfg: Any = getattr(tracing, "config", None)
        self.on = otel is not None and cfg is not None and cfg.trace_process
        if not self.on:
            return
        node = self.node
        self.name = cfg.span_name.replace("{class}", tracing._args[0] or type(node).__name__)
        attrs: dict[str, Any] = {}
        node_id = getattr(node, "node_id", None)
        if node_id is not None:
            attrs["onex.node_id"] = str(node_id)
        node_type = tracing.node_type
        if node_type is not None:
            attrs["onex.node_type"] = node_type
        self.attrs = attrs
        self.corr = cfg.correlation == "trace_id"
        self.start = tracing._start_span
        self.attach = otel.attach
        self.detach = otel.detach
        self.get_current = otel.get_current
        self.set_in = otel.set_span_in_context
        self.internal = otel.KINDS["internal"]
        self.failed = tracing._failed
        name, start, attach, set_in, internal, corr = (
            self.name, self.start, self.attach, self.set_in, self.internal, self.corr)
        get_current, detach = self.get_current, self.detach
        corr_get, corr_set, corr_reset = correlation_id.get, correlation_id.set, \
            correlation_id.reset
        incoming_get = _incoming.get

        reserve = getattr(tracing._backend.id_generator, "reserve_trace_id", None)
        current_span = otel.get_current_span

        def enter() -> tuple[Any, Any, Any]:
            kind = internal
            inc = incoming_get()
            if inc is not None and inc[1] is get_current():
                kind = inc[0]  # directly under continue_from: SERVER / CONSUMER
            cid = corr_get()
            ctoken = None
            if cid is not None:
                span = start(name, None, kind, {**attrs, "onex.correlation_id": cid})
            elif not corr:
                span = start(name, None, kind, attrs)
            elif reserve is not None:
                # the trace id is known before the span starts: the parent's, or reserved for
                # the new root; the correlation id goes in with the other attributes
                parent = current_span().get_span_context()
                cid = f"{parent.trace_id if parent.is_valid else reserve():032x}"
                ctoken = corr_set(cid)
                span = start(name, None, kind, {**attrs, "onex.correlation_id": cid})
            else:  # an injected provider: read the trace id from the started span
                span = start(name, None, kind, attrs)
                cid = f"{span.get_span_context().trace_id:032x}"
                ctoken = corr_set(cid)
                if span.is_recording():
                    span.set_attribute("onex.correlation_id", cid)
            return span, attach(set_in(span)), ctoken

        def leave(span: Any, token: Any, ctoken: Any) -> None:
            if ctoken is not None:
                corr_reset(ctoken)
            detach(token)
            span.end()

        self.enter = enter
        self.leave = leave


def _rebuild(config: TracingConfig, service_name: str | None, instance_id: str | None,
             node_type: str | None) -> Tracing:
    return Tracing(config, service_name=service_name, instance_id=instance_id,
                   node_type=node_type)


# -- the logging patcher's reader -----------------------------------------------------------

_reader_installed = False


def _install_log_reader(otel: Any) -> None:
    """Give the logging capability's patcher a reader of the current span's ids (once per
    process, when the first enabled tracer is built; never imports OpenTelemetry itself)."""
    global _reader_installed
    if _reader_installed:
        return
    from onex_compose.capabilities import logging as onex_logging

    get_current_span = otel.get_current_span

    def span_ids() -> tuple[str, str] | None:
        ctx = get_current_span().get_span_context()
        if not ctx.is_valid:
            return None
        return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"

    onex_logging.set_span_reader(span_ids)
    _reader_installed = True
