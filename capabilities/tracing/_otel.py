"""Everything that touches OpenTelemetry: the only module of the package that imports it.

Imported by :class:`~onex_compose.capabilities.tracing.Tracing` at setup, and only when tracing
is enabled (``import opentelemetry.sdk.trace`` costs about 40 ms). It builds the node's own
``TracerProvider`` (never the global one: ``trace.set_tracer_provider`` is never called) with:

* the configured sampler, wrapped by :class:`CountingSampler` (counts dropped spans as
  ``tracing_spans_total{sampled="false"}``);
* a :class:`CountingProcessor` in front of the configured span processor (counts ended spans by
  their sampled flag);
* the configured exporter wrapped by :class:`GuardedExporter`, which turns a failed export or an
  exception into a counted, logged-once-per-outage event that never reaches ``process()``.
"""

from __future__ import annotations

import importlib
import logging
import random
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import SpanKind, Status, StatusCode

from onex_compose._redact import scrub_text
from onex_compose.capabilities.tracing._model import TracingConfig, resolve_endpoint
from onex_compose.exceptions import ConfigurationError

# the names _tracer.py binds into its hot paths
attach = otel_context.attach
detach = otel_context.detach
get_current = otel_context.get_current
get_current_span = otel_trace.get_current_span
set_span_in_context = otel_trace.set_span_in_context
INVALID_SPAN = otel_trace.INVALID_SPAN
EMPTY_CONTEXT = Context()
ERROR = StatusCode.ERROR

KINDS: dict[str, SpanKind] = {
    "internal": SpanKind.INTERNAL, "server": SpanKind.SERVER, "client": SpanKind.CLIENT,
    "producer": SpanKind.PRODUCER, "consumer": SpanKind.CONSUMER,
}


def span_kind(kind: str | SpanKind) -> SpanKind:
    """``"client"`` -> ``SpanKind.CLIENT`` (a ``SpanKind`` passes through).

    Raises:
        ValueError: an unknown kind, listing the allowed ones.
    """
    if isinstance(kind, SpanKind):
        return kind
    try:
        return KINDS[kind]
    except (KeyError, TypeError):
        raise ValueError(f"unknown span kind {kind!r}; use one of {', '.join(KINDS)}") from None


def record_error(span: Any, exc: BaseException, record: bool, max_len: int) -> None:
    """Mark ``span`` failed by ``exc``: status ERROR, ``error.type``, ``onex.retriable`` and
    (``record``) one ``exception`` event whose message and stack trace are scrubbed."""
    if not span.is_recording():
        return
    kind = type(exc)
    type_name = kind.__qualname__ if kind.__module__ == "builtins" else \
        f"{kind.__module__}.{kind.__qualname__}"
    message = scrub_text(str(exc))[:max_len]
    if record:
        stack = scrub_text("".join(traceback.format_exception(kind, exc, exc.__traceback__)))
        span.add_event("exception", {"exception.type": type_name, "exception.message": message,
                                     "exception.stacktrace": stack,
                                     "exception.escaped": True})
    span.set_attributes({"error.type": type_name,
                         "onex.retriable": bool(getattr(exc, "onex_retriable", False))})
    span.set_status(Status(ERROR, f"{kind.__name__}: {message}" if message else kind.__name__))


class ReservingIdGenerator(RandomIdGenerator):
    """Random ids (as the SDK's default), plus :meth:`reserve_trace_id`: the process guard
    learns the trace id of the root span it is about to start, so the correlation id goes into
    the span's attributes at start (no ``set_attribute`` afterwards, which takes the span's
    lock). A reservation belongs to the thread that made it and is used by its next root span.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def reserve_trace_id(self) -> int:
        trace_id = random.getrandbits(128)
        while not trace_id:
            trace_id = random.getrandbits(128)
        self._local.pending = trace_id
        return trace_id

    def generate_trace_id(self) -> int:
        local = self._local
        trace_id: int = getattr(local, "pending", 0)
        if trace_id:
            local.pending = 0
            return trace_id
        return super().generate_trace_id()


# -- counting wrappers ----------------------------------------------------------------------


class CountingSampler(Sampler):
    """The configured sampler, counting the spans it drops (``sampled="false"``)."""

    def __init__(self, inner: Sampler, dropped: Callable[[], Any]) -> None:
        self.inner = inner
        self._dropped = dropped
        self._should = inner.should_sample

    def should_sample(self, parent_context: Any, trace_id: int, name: str, kind: Any = None,
                      attributes: Any = None, links: Any = None, trace_state: Any = None,
                      ) -> SamplingResult:
        result = self._should(parent_context, trace_id, name, kind, attributes, links,
                              trace_state)
        if not result.decision.is_recording():  # type: ignore[no-untyped-call]
            self._dropped()
        return result

    def get_description(self) -> str:
        return self.inner.get_description()


class CountingProcessor(SpanProcessor):
    """A thin processor in front of the configured one: counts every ended span by its sampled
    flag (``tracing_spans_total{sampled}``) and forwards everything."""

    def __init__(self, inner: SpanProcessor | None, sampled: Callable[[], Any],
                 unsampled: Callable[[], Any]) -> None:
        self.inner = inner
        self._sampled = sampled
        self._unsampled = unsampled
        self._on_end = inner.on_end if inner is not None else None

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if self.inner is not None:
            self.inner.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        ctx = span.context
        if ctx is not None and ctx.trace_flags & 1:
            self._sampled()
        else:
            self._unsampled()
        on_end = self._on_end
        if on_end is not None:
            on_end(span)

    def shutdown(self) -> None:
        if self.inner is not None:
            self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True if self.inner is None else bool(self.inner.force_flush(timeout_millis))


_quiet = threading.local()  # set while a GuardedExporter runs its exporter, in that thread


class _OwnExports(logging.Filter):
    """Drops the OTLP exporter's own log records (each failed attempt, each retry) while one of
    our :class:`GuardedExporter` runs it: the node counts the failure and logs it once per
    outage instead. Other users of the OTLP exporter in the process keep their records."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_quiet, "active", False)


_FILTER = _OwnExports()
_QUIETED = ("opentelemetry.exporter.otlp.common.http",
            "opentelemetry.exporter.otlp.proto.http.trace_exporter",
            "opentelemetry.exporter.otlp.proto.http")


def _quiet_otlp_loggers() -> None:
    for name in _QUIETED:
        log = logging.getLogger(name)
        if _FILTER not in log.filters:
            log.addFilter(_FILTER)


class GuardedExporter(SpanExporter):
    """The configured exporter, made harmless: a ``FAILURE`` result or an exception is reported
    to ``on_result(False, reason)`` (counted, logged once per outage, shown in health) and
    never propagates; a success reports ``on_result(True, None)``."""

    def __init__(self, inner: SpanExporter, on_result: Callable[[bool, str | None], None]) -> None:
        self.inner = inner
        self._on_result = on_result
        self.closed = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self.closed:  # spans of a node used after aclose(): dropped, not an outage
            return SpanExportResult.FAILURE
        _quiet.active = True
        try:
            result = self.inner.export(spans)
        except Exception as exc:
            self._on_result(False, scrub_text(f"{type(exc).__name__}: {exc}"))
            return SpanExportResult.FAILURE
        finally:
            _quiet.active = False
        if result is SpanExportResult.SUCCESS:
            self._on_result(True, None)
        else:
            self._on_result(False, f"the exporter reported {getattr(result, 'name', result)}")
        return result

    def shutdown(self) -> None:
        self.closed = True
        try:
            self.inner.shutdown()
        except Exception as exc:  # never raise from close
            self._on_result(False, scrub_text(f"shutdown: {type(exc).__name__}: {exc}"))

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        flush = getattr(self.inner, "force_flush", None)
        return True if flush is None else bool(flush(timeout_millis))


# -- building -------------------------------------------------------------------------------


def make_sampler(cfg: TracingConfig) -> Sampler:
    """The configured sampler (``parent_ratio`` is ParentBased(TraceIdRatioBased(ratio)))."""
    if cfg.sampler == "always_on":
        return ALWAYS_ON
    if cfg.sampler == "always_off":
        return ALWAYS_OFF
    ratio = TraceIdRatioBased(cfg.ratio)
    return ParentBased(ratio) if cfg.sampler == "parent_ratio" else ratio


def make_propagator(names: Sequence[str]) -> Any:
    """A composite W3C propagator (``tracecontext`` and/or ``baggage``).

    Raises:
        ConfigurationError: an unknown propagator name, listing the allowed ones.
    """
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    known = {"tracecontext": TraceContextTextMapPropagator, "baggage": W3CBaggagePropagator}
    out = []
    for name in names:
        if name not in known:
            raise ConfigurationError(f"tracing: unknown propagator {name!r}; allowed: "
                                     f"{', '.join(known)}")
        out.append(known[name]())
    return CompositePropagator(out)


def make_exporter(cfg: TracingConfig) -> SpanExporter | None:
    """The configured exporter (``None`` for ``none``)."""
    if cfg.exporter == "none":
        return None
    if cfg.exporter == "memory":
        return InMemorySpanExporter()
    if cfg.exporter == "console":
        return ConsoleSpanExporter()
    from importlib.util import find_spec

    if find_spec("opentelemetry.exporter.otlp.proto.http") is None:
        raise ConfigurationError(
            "tracing: exporter 'otlp_http' needs opentelemetry-exporter-otlp-proto-http: "
            "pip install 'onex-compose[otel]'")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    _quiet_otlp_loggers()
    return OTLPSpanExporter(
        endpoint=resolve_endpoint(cfg),
        headers={k: v.get_secret_value() for k, v in cfg.otlp_headers.items()},
        timeout=cfg.otlp_timeout)


def load_provider(spec: str) -> Any:
    """The ``TracerProvider`` named by ``"module:object"``.

    Raises:
        ConfigurationError: the module or object cannot be found, or is not a tracer provider.
    """
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"tracing: provider {spec!r} cannot be loaded ({exc}); give "
                                 "'module:object' naming a TracerProvider") from None
    if callable(obj) and not hasattr(obj, "get_tracer"):
        obj = obj()  # a factory
    if not isinstance(obj, otel_trace.TracerProvider):
        raise ConfigurationError(f"tracing: provider {spec!r} is a {type(obj).__name__}, not an "
                                 "opentelemetry TracerProvider")
    return obj


class Backend:
    """The OpenTelemetry side of one node's :class:`Tracing`: provider, tracer, exporter,
    propagator, and the counting/guarding wrappers.

    Args:
        cfg: the tracing config.
        service_name: resource ``service.name``.
        instance_id: resource ``service.instance.id`` (the node id), or ``None``.
        counters: ``(sampled, unsampled, export_error)`` zero-argument counting callables.
        on_export: called with ``(ok, reason)`` after every export attempt.
    """

    def __init__(self, cfg: TracingConfig, *, service_name: str, instance_id: str | None,
                 counters: tuple[Callable[[], Any], Callable[[], Any]],
                 on_export: Callable[[bool, str | None], None]) -> None:
        self.propagator = make_propagator(cfg.propagators)
        self.owns_provider = cfg.provider is None
        self.memory: InMemorySpanExporter | None = None
        self.exporter: SpanExporter | None = None
        self.id_generator: ReservingIdGenerator | None = None
        if cfg.provider is not None:
            if cfg.exporter != "none":
                raise ConfigurationError(
                    "tracing: 'provider' and 'exporter' are exclusive: an injected provider "
                    "exports through its own processors; leave exporter at 'none'")
            self.provider: Any = load_provider(cfg.provider)
        else:
            sampled, unsampled = counters
            exporter = make_exporter(cfg)
            self.exporter = exporter
            if isinstance(exporter, InMemorySpanExporter):
                self.memory = exporter
            inner: SpanProcessor | None = None
            if exporter is not None:
                guarded = GuardedExporter(exporter, on_export)
                if cfg.processor == "simple":
                    inner = SimpleSpanProcessor(guarded)
                else:
                    inner = BatchSpanProcessor(
                        guarded, max_queue_size=cfg.max_queue_size,
                        schedule_delay_millis=cfg.schedule_delay * 1000,
                        max_export_batch_size=min(cfg.max_export_batch_size, cfg.max_queue_size),
                        export_timeout_millis=cfg.otlp_timeout * 1000)
            attrs: dict[str, Any] = {"service.name": service_name,
                                     "telemetry.sdk.language": "python"}
            if instance_id is not None:
                attrs["service.instance.id"] = str(instance_id)
            self.id_generator = ReservingIdGenerator()
            provider = TracerProvider(
                sampler=CountingSampler(make_sampler(cfg), unsampled),
                id_generator=self.id_generator,
                resource=Resource.create(attrs),
                span_limits=SpanLimits(max_attribute_length=cfg.attribute_value_max_length),
                shutdown_on_exit=False)  # the facility's finalizer shuts it down
            provider.add_span_processor(CountingProcessor(inner, sampled, unsampled))
            self.provider = provider
        from onex_compose import __version__

        self.tracer = self.provider.get_tracer("onex_compose", __version__)

    def inject(self, carrier: dict[str, str], context: Any = None) -> dict[str, str]:
        self.propagator.inject(carrier, context=context)
        return carrier

    def extract(self, headers: Mapping[str, str] | None) -> Context:
        """The context carried by ``headers``, on top of an empty context (a missing or invalid
        ``traceparent`` gives a context without a span: the next span is a new root)."""
        if not headers:
            return EMPTY_CONTEXT
        return self.propagator.extract(headers, context=EMPTY_CONTEXT)  # type: ignore[no-any-return]

    def force_flush(self, timeout: float) -> bool:
        flush = getattr(self.provider, "force_flush", None)
        return True if flush is None else bool(flush(int(timeout * 1000)))

    def shutdown(self) -> None:
        if self.owns_provider:
            self.provider.shutdown()


def shutdown_provider(provider: Any) -> None:
    """Shut a provider down, never raising (a finalizer)."""
    try:
        provider.shutdown()
    except Exception:
        pass
