"""tracing: OpenTelemetry spans for a node, W3C propagation, one TracerProvider per node.

What a node gets (``self.tracer``, a :class:`Tracing`):

* **its own provider.** Each node builds its own ``TracerProvider`` (sampler, span processor,
  exporter from :class:`TracingConfig`); ``trace.set_tracer_provider`` is never called (it works
  only once per process), so two nodes in one process export to their own exporters and the
  global provider stays the proxy. ``provider: "module:object"`` uses a given provider instead
  (never shut down by the node). ``close_tracing`` flushes and shuts down the provider it built.
* **a ``process()`` span** (guard rank 5, outermost but node_service): ``"{class}.process"``,
  kind INTERNAL, or SERVER/CONSUMER directly under :meth:`Tracing.continue_from`; attributes
  ``onex.node_id``, ``onex.node_type``, ``onex.correlation_id``. An exception gives status ERROR,
  one ``exception`` event (message and stack scrubbed by the project's scrubber) and
  ``onex.retriable`` from the exception's ``onex_retriable``; ``asyncio.CancelledError`` is the
  event ``cancelled``, not an error.
* **correlation**: with ``correlation: trace_id`` a call that arrives without a correlation id
  gets the 32-hex trace id as its correlation id, so log records, published events and spans
  share one id (tracing sits outside logging, rank 10, for this).
* **propagation**: :meth:`Tracing.inject` writes ``traceparent`` (plus ``tracestate`` /
  ``baggage``) of the current context, sampled or not; :meth:`Tracing.continue_from` makes a
  transport's headers the current context (a missing or invalid ``traceparent`` starts a new
  trace and raises nothing). The event bus uses both: a PRODUCER span ``"{topic} publish"``
  injects into ``Event.headers``, and each subscription runs the handler in a CONSUMER span
  ``"{topic} process"`` whose parent is the publisher's span, across processes on Redis too.
* **sampling**: ``parent_ratio`` (default; an incoming sampled parent is always sampled),
  ``ratio``, ``always_on``, ``always_off``.
* **metrics**: ``tracing_spans_total{sampled}`` (a thin span processor in front of the
  configured one, and the sampler wrapper for dropped spans) and ``tracing_export_errors_total``
  (a wrapper around the exporter). A failing export never reaches ``process()``: it is counted,
  logged once per outage, and reported as ``degraded`` by the ``tracing`` health check.
* **other capabilities** listed in ``instrument`` take ``node.tracer`` at their setup
  (``tracer.for_capability("retry")``) and call :meth:`Tracing.add_event` /
  :meth:`Tracing.set_attribute` (no-ops without a recording span) or open child spans.
* **logging**: while a span is current, every log record carries ``trace_id`` / ``span_id``.

With ``enabled: false`` the guard is not installed, ``node.tracer`` is a no-op facility, and
nothing from OpenTelemetry is imported; without the capability nothing changes anywhere.

Example:
    >>> import asyncio
    >>> from onex_compose import NodeCompute, compose
    >>> class Pricer(NodeCompute):
    ...     async def process(self, item):
    ...         with self.tracer.span("price.lookup", kind="client", attributes={"sku": item}):
    ...             return 42
    >>> node = compose(Pricer, ["tracing"])(
    ...     capability_config={"tracing": {"exporter": "memory", "processor": "simple"}})
    >>> asyncio.run(node.process("A1"))
    42
    >>> sorted(s.name for s in node.tracer.exporter.get_finished_spans())
    ['Pricer.process', 'price.lookup']
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar, cast

from onex_compose import coerce_config, facility, has_capability
from onex_compose.capabilities.tracing._model import TracingConfig, TracingProtocol
from onex_compose.capabilities.tracing._tracer import NO_SPAN, SpanScope, Tracing

__all__ = ["NO_SPAN", "MixinTracing", "SpanScope", "Tracing", "TracingConfig", "TracingProtocol"]

T = TypeVar("T")


def _node_type(node: Any) -> str | None:
    node_type = getattr(type(node), "node_type", None)
    return None if node_type is None else str(getattr(node_type, "value", node_type))


def _service_name(node: Any) -> str:
    """The node's class name; for a class built by ``compose()``, its base's (``Pricer``, not
    ``Pricer[metrics,tracing]``)."""
    cls = type(node)
    comp = vars(cls).get("__composition__")
    if getattr(comp, "style", None) == "composed":
        return str(comp.base.__name__)
    return cls.__name__


class MixinTracing:
    """Distributed tracing and request correlation: ``self.tracer`` and a ``process()`` span.

    Requires ``metrics``; registers the ``tracing`` health check when ``health_check`` is
    composed (order-only dependency). Configured by the ``tracing`` subcontract
    (:class:`TracingConfig`).

    Example:
        >>> from onex_compose import NodeEffect, compose
        >>> node = compose(NodeEffect, ["tracing"])(
        ...     capability_config={"tracing": {"enabled": False}})
        >>> node.tracer
        <Tracing disabled>
    """

    __onex_capability__ = "tracing"
    __slots__ = ()

    def setup_tracing(self, config: TracingConfig | Mapping[str, Any] | None = None) -> None:
        """Build ``self.tracer`` (its own provider when enabled); register its health check."""
        cfg = coerce_config(TracingConfig, config, "tracing")
        node = cast(Any, self)
        node.tracer = Tracing(cfg, service_name=_service_name(self),
                              instance_id=getattr(self, "node_id", None),
                              node_type=_node_type(self), metrics=node.metrics)
        if cfg.enabled and has_capability(self, "health_check"):
            node.register_health_check(node.tracer.health, name="tracing", critical=False)

    @facility
    def tracer(self) -> Tracing:
        """The node's tracer (defaults when ``setup_tracing`` never ran)."""
        node = cast(Any, self)
        return Tracing(TracingConfig(), service_name=_service_name(self),
                       instance_id=getattr(self, "node_id", None), node_type=_node_type(self),
                       metrics=node.metrics)

    async def close_tracing(self) -> None:
        """Flush and shut down the provider the node built (idempotent; an injected provider
        is only flushed)."""
        tracer = getattr(self, "tracer", None)
        if isinstance(tracer, Tracing):
            await tracer.aclose()

    def _guard_tracing(self, call: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        """Wrap ``process()`` in the process span (guard rank 5); unchanged when tracing is
        disabled or ``trace_process`` is off."""
        tracer = cast(Any, self).tracer
        cfg = tracer.config
        if not (cfg.enabled and cfg.trace_process):
            return call
        return cast(Callable[..., Awaitable[T]], tracer.process_guard(self, call))

    def _guard_sync_tracing(self, call: Callable[..., T]) -> Callable[..., T]:
        """The sync twin of :meth:`_guard_tracing`, for a plain ``def process``."""
        tracer = cast(Any, self).tracer
        cfg = tracer.config
        if not (cfg.enabled and cfg.trace_process):
            return call
        return cast(Callable[..., T], tracer.process_guard_sync(self, call))
