"""The tracing capability's configuration, protocol and the small helpers that need no OTel."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from onex_compose.exceptions import ConfigurationError

PROPAGATORS = ("tracecontext", "baggage")
SAMPLERS = ("parent_ratio", "ratio", "always_on", "always_off")
EXPORTERS = ("none", "memory", "console", "otlp_http")
SPAN_KINDS = ("internal", "server", "client", "producer", "consumer")
INSTRUMENTABLE = ("caching", "event_bus", "retry", "circuit_breaker", "rate_limiting", "timeout",
                  "bulkhead", "database", "message_queue", "webhook", "profiling")
DEFAULT_INSTRUMENT = ("caching", "event_bus", "retry", "circuit_breaker", "rate_limiting",
                      "timeout", "bulkhead", "database", "message_queue", "webhook")
DEFAULT_OTLP_ENDPOINT = "http://127.0.0.1:4318/v1/traces"
_PROVIDER_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class TracingConfig(BaseModel):
    """The ``tracing`` subcontract (every key of ``tracing_config`` in ``mixin_tracing.yaml``).

    Attributes:
        enabled: ``False``: the ``process()`` guard calls straight through, ``node.tracer`` is a
            no-op facility and nothing from OpenTelemetry is imported.
        service_name: resource ``service.name`` (``None``: the node's class name); the resource's
            ``service.instance.id`` is the node id.
        sampler: ``parent_ratio`` (ParentBased(TraceIdRatioBased(ratio)), the default: a sampled
            parent is always followed), ``ratio``, ``always_on`` or ``always_off``.
        ratio: the fraction of new traces sampled (0..1).
        exporter: ``none``, ``memory`` (InMemorySpanExporter, for tests), ``console`` or
            ``otlp_http``.
        otlp_endpoint: the OTLP/HTTP traces URL; ``None``: ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``,
            then ``OTEL_EXPORTER_OTLP_ENDPOINT`` (+ ``/v1/traces``), else
            ``http://127.0.0.1:4318/v1/traces``.
        otlp_headers: headers sent with every export (values are secrets: never shown).
        otlp_timeout: seconds an export may take, retries included.
        processor: ``batch`` (BatchSpanProcessor, a background thread) or ``simple`` (exports
            as each span ends, in the caller's thread).
        max_queue_size / schedule_delay / max_export_batch_size: the batch processor's knobs.
        propagators: ``tracecontext`` (W3C ``traceparent``/``tracestate``) and/or ``baggage``.
        trace_process: open a span per ``process()`` call.
        span_name: the process span's name; ``{class}`` is the node's class name.
        record_exceptions: add an ``exception`` event (scrubbed message) to failing spans.
        correlation: ``trace_id``: a call without a correlation id gets the trace id as one;
            ``keep``: leave correlation ids to the logging capability.
        instrument: the capabilities that emit spans and span events.
        attribute_value_max_length: longer string attribute values are truncated.
        provider: ``"module:object"`` naming an SDK ``TracerProvider`` to use instead of building
            one (it is never shut down by the node).

    Example:
        >>> TracingConfig(exporter="memory", ratio=0.5).sampler
        'parent_ratio'
        >>> TracingConfig(otlp_headers={"x-api-key": "k"})     # doctest: +ELLIPSIS
        TracingConfig(enabled=True, ..., otlp_headers={'x-api-key': SecretStr('**********')}, ...)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    service_name: str | None = None
    sampler: Literal["parent_ratio", "ratio", "always_on", "always_off"] = "parent_ratio"
    ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    exporter: Literal["none", "memory", "console", "otlp_http"] = "none"
    otlp_endpoint: str | None = None
    otlp_headers: dict[str, SecretStr] = Field(default_factory=dict)
    otlp_timeout: float = Field(default=10.0, gt=0)
    processor: Literal["batch", "simple"] = "batch"
    max_queue_size: int = Field(default=2048, ge=1)
    schedule_delay: float = Field(default=5.0, gt=0)
    max_export_batch_size: int = Field(default=512, ge=1)
    propagators: list[str] = Field(default_factory=lambda: list(PROPAGATORS))
    trace_process: bool = True
    span_name: str = "{class}.process"
    record_exceptions: bool = True
    correlation: Literal["trace_id", "keep"] = "trace_id"
    instrument: list[str] = Field(default_factory=lambda: list(DEFAULT_INSTRUMENT))
    attribute_value_max_length: int = Field(default=1024, ge=1)
    provider: str | None = None

    @field_validator("otlp_endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is not None:
            check_endpoint(value, "otlp_endpoint")
        return value

    @field_validator("propagators")
    @classmethod
    def _check_propagators(cls, value: list[str]) -> list[str]:
        bad = [p for p in value if p not in PROPAGATORS]
        if bad:
            raise ValueError(f"unknown propagator(s) {', '.join(map(repr, bad))}; allowed: "
                             f"{', '.join(PROPAGATORS)}")
        return list(dict.fromkeys(value))

    @field_validator("instrument")
    @classmethod
    def _check_instrument(cls, value: list[str]) -> list[str]:
        bad = [p for p in value if p not in INSTRUMENTABLE]
        if bad:
            raise ValueError(f"instrument lists unknown capabilit(ies) {', '.join(map(repr, bad))}"
                             f"; allowed: {', '.join(INSTRUMENTABLE)}")
        return value

    @field_validator("span_name")
    @classmethod
    def _check_span_name(cls, value: str) -> str:
        try:
            value.format_map({"class": "X"})
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"span_name may use only the '{{class}}' placeholder ({exc!r}); "
                             "e.g. '{class}.process'") from None
        if not value.strip():
            raise ValueError("span_name must not be empty; e.g. '{class}.process'")
        return value

    @field_validator("provider")
    @classmethod
    def _check_provider(cls, value: str | None) -> str | None:
        if value is not None and not _PROVIDER_SPEC.match(value):
            raise ValueError(f"provider must be 'module:object' naming a TracerProvider, got "
                             f"{value!r}")
        return value


def check_endpoint(url: str, what: str) -> str:
    """Check an OTLP/HTTP URL (``http``/``https`` with a host); return it.

    Raises:
        ValueError: naming ``what`` and the accepted form.

    Example:
        >>> check_endpoint("http://collector:4318/v1/traces", "otlp_endpoint")
        'http://collector:4318/v1/traces'
        >>> check_endpoint("collector:4318", "otlp_endpoint")   # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: otlp_endpoint must be an http:// or https:// URL with a host ...
    """
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        parts, port_ok = None, False
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        from onex_compose._redact import quote

        raise ValueError(f"{what} must be an http:// or https:// URL with a host (such as "
                         f"{DEFAULT_OTLP_ENDPOINT}), got {quote(url)}")
    return url


def resolve_endpoint(cfg: TracingConfig, environ: Mapping[str, str] = os.environ) -> str:
    """The OTLP traces URL: the config, then the two standard environment variables, then the
    local collector default. A bad URL from the environment is a :class:`ConfigurationError`.

    Example:
        >>> resolve_endpoint(TracingConfig(), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"})
        'http://c:4318/v1/traces'
        >>> resolve_endpoint(TracingConfig(), {})
        'http://127.0.0.1:4318/v1/traces'
    """
    if cfg.otlp_endpoint:
        return cfg.otlp_endpoint
    url, what = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), \
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    if not url:
        base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        url = base.rstrip("/") + "/v1/traces" if base else None
        what = "OTEL_EXPORTER_OTLP_ENDPOINT"
    if not url:
        return DEFAULT_OTLP_ENDPOINT
    try:
        return check_endpoint(url, what)
    except ValueError as exc:
        raise ConfigurationError(f"tracing: {exc}") from None


@runtime_checkable
class TracingProtocol(Protocol):
    """What ``node.tracer`` offers (``tracing_protocol``)."""

    enabled: bool

    def span(self, name: str, *, kind: str = "internal",
             attributes: Mapping[str, Any] | None = None) -> Any: ...

    def traced(self, name: str | None = None, *, kind: str = "internal",
               attributes: Mapping[str, Any] | None = None) -> Callable[[Any], Any]: ...

    def inject(self, carrier: dict[str, str] | None = None) -> dict[str, str]: ...

    def continue_from(self, headers: Mapping[str, str] | None, *,
                      kind: str = "server") -> Any: ...

    def current_trace_id(self) -> str | None: ...

    def current_span_id(self) -> str | None: ...

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None) -> None: ...

    def set_attribute(self, key: str, value: Any) -> None: ...

    async def force_flush(self, timeout: float | None = None) -> bool: ...
