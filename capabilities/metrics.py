"""The ``metrics`` capability: counters, gauges, histograms and timers, per node.

Every other capability calls metrics on its hot path (a cache hit, a retry attempt, a published
event), so a call must cost a fraction of a microsecond. The store is therefore written by hand
instead of updating ``prometheus_client`` metric objects directly, which take a lock on every
update and a lock plus a dict lookup to resolve labels (``Counter.labels(...).inc()`` ~1.8 µs):

* each series lives in a small mutable *cell*, found with one dict lookup keyed by the metric
  name (no labels) or by ``(name, tuple(labels.items()))``; the first sight of a key goes
  through a slow path that validates the name, the label names and values and the kind, and
  maps every spelling of one label set (any dict order, ``200`` or ``"200"``) to one cell;
* Prometheus exposition is built at scrape time by a custom collector on a **per-node**
  ``CollectorRegistry`` (two nodes in one process never collide on metric names), so the
  default ``memory`` backend pays nothing per call for it;
* ``backend: prometheus`` additionally mirrors every call into real ``prometheus_client``
  metrics registered on that same per-node registry (label children are resolved once per
  label set and kept in the cell), for users who want prometheus_client's own machinery
  (``_created`` series, multiprocess mode, exemplars, their existing exporters).

``benchmarks/bench_metrics.py`` compares the cost per call with ``prometheus_client``.

Semantics (the behaviour omnibase_core's own tests expect):

* counters start at 0 and accept custom non-negative steps; a negative step is a
  :class:`MetricsError` and changes nothing, as ``prometheus_client``'s ``Counter.inc`` refuses
  it (a counter only goes up: Prometheus reads a decrease as a counter reset), so
  ``snapshot()`` and the exposition always agree. Use a gauge for a value that goes down;
* a gauge keeps the last value; ``gauge_callback(name, fn)`` makes a gauge whose value is read
  by calling ``fn()`` when ``snapshot()`` or the exposition runs (``prometheus_client``'s
  ``Gauge.set_function``): the right tool for a level another object already keeps (active
  calls, queue depth), at no cost per update;
* ``timer`` and ``histogram`` feed a histogram (buckets from the config, Prometheus' defaults
  unless changed); ``timer`` records seconds, also when the block raises;
* one metric name has one kind and one set of label names for its whole life (Prometheus
  requires both); breaking that, or an invalid name, raises :class:`MetricsError` saying what
  to change;
* ``snapshot()`` returns a copy; ``reset()`` clears the local values only (with
  ``backend: prometheus`` the mirrored metrics keep their data);
* the facility works even if ``setup_metrics`` never ran (a default one is built on first use).

Thread safety: the slow path (first sight of a series) holds a lock; the fast path is a dict
lookup plus an in-place add on a list cell, which CPython 3.11-3.13 performs without switching
threads for the ``str``/``tuple`` keys used here, so concurrent increments from threads are not
lost (a test hammers one counter from 8 threads). Free-threaded builds are not supported.

Example:
    >>> from onex_compose import NodeCompute, compose
    >>> node = compose(NodeCompute, ["metrics"])()
    >>> node.metrics.increment("requests", labels={"method": "GET"})
    >>> node.metrics.gauge("queue_depth", 3)
    >>> with node.metrics.timer("compute_duration"):
    ...     pass
    >>> snap = node.metrics.snapshot()
    >>> snap["counters"]['requests{method="GET"}'], snap["gauges"]["queue_depth"]
    (1, 3)
    >>> snap["histograms"]["compute_duration"]["count"]
    1
    >>> "requests_total" in node.metrics.exposition()
    True
"""

from __future__ import annotations

import functools
import itertools
import math
import numbers
import re
import threading
import time
import weakref
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterator, Mapping
from enum import Enum
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from onex_compose import coerce_config, facility
from onex_compose.exceptions import OnexError

__all__ = [
    "DEFAULT_BUCKETS",
    "BoundCounter",
    "Metrics",
    "MetricsConfig",
    "MetricsError",
    "MetricsProtocol",
    "MixinMetrics",
    "Timer",
]

DEFAULT_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
"""prometheus_client's default histogram buckets (``+Inf`` is always added)."""

_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_RESERVED_LABELS = {"histogram": frozenset({"le"})}
_OK = {"outcome": "ok"}
_ERROR = {"outcome": "error"}
_CANCELLED = {"outcome": "cancelled"}


class MetricsError(OnexError, ValueError):
    """A metric was used with an invalid name, label, value or kind.

    Attributes:
        metric: the metric name concerned.
    """

    def __init__(self, message: str, *, metric: str | None = None) -> None:
        self.metric = metric
        super().__init__(message)


class MetricsConfig(BaseModel):
    """Configuration of the ``metrics`` capability (the ``metrics`` subcontract).

    Attributes:
        backend: ``memory`` (default): the in-process store, exposed to Prometheus at scrape
            time; ``prometheus``: also mirror every call into ``prometheus_client`` metrics.
        namespace: prefix of every exported metric name (``onex`` makes ``requests`` export as
            ``onex_requests_total``); empty for none. Snapshot keys never carry it.
        buckets: histogram bucket upper bounds in seconds (for timers), strictly increasing;
            ``+Inf`` is implicit.
        instrument_process: when the node's ``process()`` pipeline is guarded, time every call
            into the histogram ``process_duration`` labelled ``outcome`` (ok/error/cancelled).

    Example:
        >>> MetricsConfig(namespace="shop").namespace
        'shop'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["memory", "prometheus"] = "memory"
    namespace: str = ""
    buckets: list[float] = Field(default_factory=lambda: list(DEFAULT_BUCKETS))
    instrument_process: bool = True

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        if value and not _NAME_RE.match(value):
            raise ValueError(
                f"namespace {value!r} is not a valid Prometheus metric name prefix: use "
                f"letters, digits and underscores, not starting with a digit "
                f"(for example {_suggest(value)!r})")
        return value

    @field_validator("buckets")
    @classmethod
    def _check_buckets(cls, value: list[float]) -> list[float]:
        bounds = [float(b) for b in value]
        if bounds and math.isinf(bounds[-1]) and bounds[-1] > 0:
            bounds.pop()  # +Inf is implicit
        if not bounds:
            raise ValueError("buckets needs at least one finite upper bound (+Inf is implicit)")
        if any(math.isnan(b) or math.isinf(b) for b in bounds):
            raise ValueError(f"buckets must be finite numbers, got {value!r}")
        if any(b >= c for b, c in itertools.pairwise(bounds)):
            raise ValueError(f"buckets must be strictly increasing, got {value!r}")
        return bounds


@runtime_checkable
class MetricsProtocol(Protocol):
    """What a metrics facility offers (seed 000's ``MetricsProtocol``, with labels)."""

    def increment(self, name: str, value: float = 1,
                  labels: Mapping[str, Any] | None = None) -> None: ...

    def gauge(self, name: str, value: float, labels: Mapping[str, Any] | None = None) -> None: ...

    def timer(self, name: str, labels: Mapping[str, Any] | None = None) -> Timer: ...

    def histogram(self, name: str, value: float,
                  labels: Mapping[str, Any] | None = None) -> None: ...

    def snapshot(self) -> dict[str, Any]: ...


# -- storage cells ----------------------------------------------------------------------------


class _Hist:
    """One histogram series: per-bucket counts (non-cumulative), count, sum, min, max."""

    __slots__ = ("bounds", "count", "counts", "max", "min", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    def observe(self, value: float) -> None:
        # the sum first: a non-number raises here, before anything changed
        self.sum += value
        # bucket "le=b" holds values <= b: the first bound >= value
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value


class _MirroredHist(_Hist):
    """A histogram series that also feeds a ``prometheus_client`` histogram child."""

    __slots__ = ("child",)

    def __init__(self, bounds: tuple[float, ...], child: Any) -> None:
        super().__init__(bounds)
        self.child = child

    def observe(self, value: float) -> None:
        _Hist.observe(self, value)
        self.child.observe(value)


class _FnGauge:
    """A gauge series whose value is ``fn()``, read at scrape time (never in the update index)."""

    __slots__ = ("child", "fn")

    def __init__(self, fn: Callable[[], float], child: Any = None) -> None:
        self.fn = fn
        self.child = child


class _Schema:
    """A metric's definition: kind, label names, exported name and its series."""

    __slots__ = ("exported", "kind", "labelnames", "name", "prom", "series")

    def __init__(self, name: str, kind: str, labelnames: tuple[str, ...], exported: str) -> None:
        self.name = name
        self.kind = kind
        self.labelnames = labelnames
        self.exported = exported
        self.prom: Any = None  # the mirrored prometheus_client metric
        self.series: dict[tuple[tuple[str, str], ...], Any] = {}


class Timer:
    """Times a block into a histogram; a context manager, sync (``with``) or async (``async with``).

    The elapsed seconds are recorded when the block ends, also when it raises, and kept in
    :attr:`elapsed`.

    Example:
        >>> from onex_compose.capabilities.metrics import Metrics
        >>> m = Metrics()
        >>> with m.timer("step") as t:
        ...     pass
        >>> t.elapsed >= 0, m.snapshot()["histograms"]["step"]["count"]
        (True, 1)
    """

    __slots__ = ("_clock", "_hist", "_start", "elapsed")

    def __init__(self, hist: _Hist, clock: Callable[[], float]) -> None:
        self._hist = hist
        self._clock = clock
        self.elapsed: float | None = None

    def __enter__(self) -> Timer:
        self._start = self._clock()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.elapsed = elapsed = self._clock() - self._start
        self._hist.observe(elapsed)

    async def __aenter__(self) -> Timer:
        self._start = self._clock()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.elapsed = elapsed = self._clock() - self._start
        self._hist.observe(elapsed)


class BoundCounter(Protocol):
    """What :meth:`Metrics.bind_counter` returns: ``bound()`` adds 1, ``bound(n)`` adds n.

    A plain function (no method dispatch on the hot path): the call is an in-place add on the
    series' cell, plus the ``prometheus_client`` child's ``inc`` with ``backend: prometheus``.
    After ``reset()`` or a reconfiguration the next call finds the series again (through
    :meth:`Metrics.increment`'s slow path). A negative step or a non-number is a
    :class:`MetricsError` and changes nothing, as with ``increment``.
    """

    def __call__(self, value: float = 1) -> None: ...


class _Binding:
    """The state of one bound counter; the facility forgets its cell on reset/reconfigure."""

    __slots__ = ("__weakref__", "cell", "labels", "metrics", "name")

    def __init__(self, metrics: Metrics, name: str, labels: dict[str, str] | None) -> None:
        self.metrics = metrics
        self.name = name
        self.labels = labels
        self.cell: list[Any] | None = None

    def slow(self, value: Any) -> None:
        m = self.metrics
        number = _number(value, "increment", self.name)
        if number < 0:
            raise _negative_step(self.name, number)
        cell = m._cell(m._counters, "counter", "increment", self.name, self.labels)
        m._apply_increment(cell, number)
        self.cell = cell

    def function(self) -> BoundCounter:
        binding = self
        name = self.name

        def bound_counter(value: float = 1) -> None:
            cell = binding.cell
            try:
                if value < 0:
                    raise _negative_step(name, value)
                child = cell[1]  # type: ignore[index]
                if child is not None:  # backend: prometheus
                    child.inc(value)
                cell[0] += value  # type: ignore[index]
            except TypeError:  # no cell yet (None), or not a number
                binding.slow(value)

        bound_counter.__qualname__ = bound_counter.__name__ = (
            f"bound_counter[{_series_key(name, tuple(sorted((self.labels or {}).items())))}]")
        return bound_counter


# -- the facility -----------------------------------------------------------------------------


class Metrics:
    """A node's metrics: the in-process store and its Prometheus exposition.

    Args:
        config: the validated :class:`MetricsConfig` (defaults when ``None``).
        clock: seconds for timers (default ``time.perf_counter``); a test may pass
            :class:`~onex_compose.capabilities._context.ManualClock`. Also settable later
            as the ``clock`` attribute.

    Snapshot keys are the metric names as called (without the namespace), followed by the
    labels in Prometheus' notation when there are any, sorted by label name:
    ``requests{method="GET",status="200"}``.

    Example:
        >>> m = Metrics()
        >>> m.increment("hits"); m.increment("hits", 4)
        >>> m.snapshot()["counters"]["hits"]
        5
        >>> print(m.exposition().splitlines()[-1])
        hits_total 5.0
    """

    __slots__ = ("_bound", "_bounds", "_counters", "_functions", "_gauges", "_histograms",
                 "_lock", "_registry", "_schema", "_taken", "clock", "config")

    def __init__(self, config: MetricsConfig | None = None, *,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self._lock = threading.RLock()
        self._configure(config or MetricsConfig())

    def _configure(self, config: MetricsConfig) -> None:
        with self._lock:
            self.config = config
            self._counters: dict[Any, list[Any]] = {}
            self._gauges: dict[Any, list[Any]] = {}
            self._histograms: dict[Any, _Hist] = {}
            if not hasattr(self, "_bounds"):  # declared buckets survive a reconfiguration
                self._bounds: dict[str, tuple[float, ...]] = {}
            if not hasattr(self, "_functions"):  # and so do gauge callbacks
                self._functions: dict[tuple[str, Any], Callable[[], float]] = {}
            self._schema: dict[str, _Schema] = {}
            self._taken: dict[str, str] = {}
            self._registry: Any = None
            if not hasattr(self, "_bound"):  # bound counters survive a reconfiguration
                self._bound: weakref.WeakSet[_Binding] = weakref.WeakSet()
            for binding in self._bound:
                binding.cell = None  # the next call finds (or redefines) the series again
            for (name, labels), fn in list(self._functions.items()):
                self._function_cell(name, labels, fn)

    def configure(self, config: MetricsConfig) -> None:
        """Apply a new configuration in place (state is cleared, the object stays the same).

        Other capabilities keep a reference to this facility, so reconfiguring metrics
        (``setup_metrics`` called again) must not replace it.
        """
        if config.backend == "prometheus":
            _require_prometheus()
        target = _MirroredMetrics if config.backend == "prometheus" else Metrics
        if type(self) is not target:
            self.__class__ = target  # same slots: switching the backend is a class switch
        self._configure(config)

    # -- the hot paths ------------------------------------------------------------------------

    def increment(self, name: str, value: float = 1,
                  labels: Mapping[str, Any] | None = None) -> None:
        """Add ``value`` (default 1, never negative) to counter ``name``.

        Args:
            name: a Prometheus metric name (``[a-zA-Z_:][a-zA-Z0-9_:]*``); exported with the
                suffix ``_total``.
            value: the step, ``>= 0`` (a counter only goes up; use a gauge for a value that
                goes down).
            labels: label names to values (strings or numbers); the same label names on every
                call for one metric.

        Raises:
            MetricsError: invalid name, labels or value (a negative step included), or
                ``name`` is another kind of metric.
        """
        try:
            cell = self._counters[name if labels is None else (name, tuple(labels.items()))]
            if value < 0:
                raise _negative_step(name, value)
            cell[0] += value
        except (KeyError, TypeError, AttributeError):
            self._increment_slow(name, value, labels)

    def gauge(self, name: str, value: float, labels: Mapping[str, Any] | None = None) -> None:
        """Set gauge ``name`` to ``value`` (the last value wins).

        Raises:
            MetricsError: invalid name, labels or value, ``name`` is another kind of metric,
                or the series is read by a :meth:`gauge_callback`.
        """
        try:
            cell = self._gauges[name if labels is None else (name, tuple(labels.items()))]
            cell[0] = value + 0  # rejects non-numbers (TypeError) on the fast path
        except (KeyError, TypeError, AttributeError):
            self._gauge_slow(name, value, labels)

    def histogram(self, name: str, value: float,
                  labels: Mapping[str, Any] | None = None) -> None:
        """Observe ``value`` in histogram ``name``.

        Raises:
            MetricsError: invalid name, labels or value, or ``name`` is another kind of metric.
        """
        try:
            hist = self._histograms[name if labels is None else (name, tuple(labels.items()))]
            hist.observe(value)
        except (KeyError, TypeError, AttributeError):
            self._histogram_cell(name, labels, "histogram").observe(_number(value, "histogram",
                                                                             name))

    def timer(self, name: str, labels: Mapping[str, Any] | None = None) -> Timer:
        """A context manager (``with`` or ``async with``) recording the block's seconds.

        Example:
            >>> m = Metrics()
            >>> with m.timer("db_query", labels={"table": "users"}):
            ...     pass
            >>> m.snapshot()["histograms"]['db_query{table="users"}']["count"]
            1
        """
        try:
            hist = self._histograms[name if labels is None else (name, tuple(labels.items()))]
        except (KeyError, TypeError, AttributeError):
            hist = self._histogram_cell(name, labels, "timer")
        return Timer(hist, self.clock)

    def bind_counter(self, name: str, labels: Mapping[str, Any] | None = None) -> BoundCounter:
        """A function counting into series ``name{labels}`` (a :class:`BoundCounter`): the cheap
        way to count on a hot path (``prometheus_client``'s ``Counter.labels(...)`` child).

        ``increment(name, value, labels)`` builds the series key from the labels on every call;
        the bound counter resolves it once, so ``bound(value)`` costs about a dict update
        (``benchmarks/bench_metrics.py``: about a third of a labelled ``increment``). It
        stays correct across :meth:`reset`, a reconfiguration (``setup_metrics`` again, a
        backend switch included) and with ``backend: prometheus`` (the mirror is updated too).

        The name, the label names and values and the kind are checked now, as the first
        ``increment`` would; the series itself appears on the first call (``snapshot()`` does
        not show a bound counter that never counted).

        Raises:
            MetricsError: an invalid name or labels, or ``name`` is another kind of metric
                or was used with other label names.

        Example:
            >>> m = Metrics()
            >>> hits = m.bind_counter("hits", labels={"route": "/"})
            >>> hits(); hits(4)
            >>> m.snapshot()["counters"]['hits{route="/"}']
            5
        """
        canon = _canonical_labels("bind_counter", name, labels, frozenset())
        with self._lock:
            self._define(name, "counter", tuple(k for k, _ in canon), "bind_counter")
            binding = _Binding(self, name, dict(canon) if labels is not None else None)
            self._bound.add(binding)
        return binding.function()

    # -- scrape-time gauges -------------------------------------------------------------------

    def gauge_callback(self, name: str, fn: Callable[[], float],
                       labels: Mapping[str, Any] | None = None) -> None:
        """Make gauge series ``name{labels}`` read ``fn()`` whenever it is read.

        ``snapshot()``, ``exposition()`` and a scrape of :attr:`registry` call ``fn`` (no
        arguments, returns a number), so the value is never stale and updating it costs
        nothing (``prometheus_client``'s ``Gauge.set_function``). Registering the same series
        again replaces the function; the registration survives ``reset()`` and a
        reconfiguration. ``gauge()`` on this series is then an error.

        Args:
            name: the gauge's name (the same rules as :meth:`gauge`).
            fn: a cheap callable returning the current value.
            labels: the series' labels.

        Raises:
            MetricsError: ``fn`` is not callable, an invalid name or labels, or ``name`` is
                another kind of metric.

        Example:
            >>> m = Metrics()
            >>> queue = [1, 2]
            >>> m.gauge_callback("queue_depth", lambda: len(queue))
            >>> queue.append(3)
            >>> m.snapshot()["gauges"]["queue_depth"]
            3
        """
        if not callable(fn):
            raise MetricsError(
                f"gauge_callback({name!r}): fn must be a callable taking no arguments and "
                f"returning a number, got {type(fn).__name__}.", metric=str(name))
        canon = _canonical_labels("gauge_callback", name, labels, frozenset())
        with self._lock:
            self._function_cell(name, canon, fn)
            self._functions[(name, canon)] = fn

    def remove_gauge_callback(self, name: str, labels: Mapping[str, Any] | None = None) -> None:
        """Stop reading series ``name{labels}`` from its callback; the series disappears.

        Does nothing if the series has no callback.
        """
        canon = _canonical_labels("remove_gauge_callback", name, labels, frozenset())
        with self._lock:
            if self._functions.pop((name, canon), None) is None:
                return
            schema = self._schema.get(name)
            cell = schema.series.pop(canon, None) if schema is not None else None
            if isinstance(cell, _FnGauge):
                self._drop_function_backend(schema, canon, cell)  # type: ignore[arg-type]

    def _function_cell(self, name: str, canon: tuple[tuple[str, str], ...],
                       fn: Callable[[], float]) -> None:
        """Install (lock held) the series of a gauge callback, replacing any plain cell."""
        schema = self._define(name, "gauge", tuple(k for k, _ in canon), "gauge_callback")
        old = schema.series.get(canon)
        if old is not None and not isinstance(old, _FnGauge):
            for key in [k for k, c in self._gauges.items() if c is old]:
                del self._gauges[key]  # gauge() on this series now takes the slow path
        cell = _FnGauge(fn)
        cell.child = self._function_backend(schema, canon, cell)
        schema.series[canon] = cell

    def _function_backend(self, schema: _Schema, canon: tuple[tuple[str, str], ...],
                          cell: _FnGauge) -> Any:
        """Hook for the mirrored backend: point the prometheus_client child at the callback."""
        return None

    def _drop_function_backend(self, schema: _Schema, canon: tuple[tuple[str, str], ...],
                               cell: _FnGauge) -> None:
        """Hook for the mirrored backend: forget the prometheus_client child."""

    @staticmethod
    def _read_function(schema: _Schema, canon: tuple[tuple[str, str], ...],
                       cell: _FnGauge) -> float:
        try:
            value = cell.fn()
            return value + 0  # type: ignore[no-any-return]
        except Exception as exc:
            raise MetricsError(
                f"gauge_callback {_series_key(schema.name, canon)}: the callback raised "
                f"{type(exc).__name__} or did not return a number; fix the callback or remove "
                "it with remove_gauge_callback().", metric=schema.name) from exc

    # -- reading ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """A copy of every local value: ``{"counters", "gauges", "histograms"}``.

        Counters and gauges map a series key to its value; histograms map it to
        ``{"count", "sum", "min", "max", "buckets"}`` where ``buckets`` maps each upper bound
        (``"0.005"`` ... ``"+Inf"``) to the cumulative count. ``min``/``max`` are ``None``
        before the first observation.

        Example:
            >>> m = Metrics()
            >>> m.histogram("size", 3.0)
            >>> h = m.snapshot()["histograms"]["size"]
            >>> h["count"], h["sum"], h["buckets"]["5.0"], h["buckets"]["+Inf"]
            (1, 3.0, 1, 1)
        """
        counters: dict[str, Any] = {}
        gauges: dict[str, Any] = {}
        histograms: dict[str, Any] = {}
        with self._lock:
            for schema in self._schema.values():
                for labels, cell in schema.series.items():
                    key = _series_key(schema.name, labels)
                    if schema.kind == "counter":
                        counters[key] = cell[0]
                    elif schema.kind == "gauge":
                        gauges[key] = (self._read_function(schema, labels, cell)
                                       if cell.__class__ is _FnGauge else cell[0])
                    else:
                        histograms[key] = _hist_dict(cell)
        return {"counters": counters, "gauges": gauges, "histograms": histograms}

    def declare_buckets(self, name: str, buckets: Any) -> None:
        """Give histogram ``name`` its own bucket bounds (in its own unit, e.g. milliseconds).

        Must come before the first observation of ``name``; the config's ``buckets`` (seconds,
        for timers) apply to every other histogram.

        Raises:
            MetricsError: bounds that are not finite and strictly increasing, or ``name``
                already observed with other bounds.
        """
        bounds = tuple(float(b) for b in buckets)
        if not bounds or not all(math.isfinite(b) for b in bounds) or any(
                a >= b for a, b in itertools.pairwise(bounds)):
            raise MetricsError(f"buckets for {name!r} must be finite and strictly increasing, got "
                               f"{list(buckets)!r}", metric=name)
        with self._lock:
            current = self._bounds.get(name)
            if current == bounds:
                return
            if name in self._schema:
                raise MetricsError(f"histogram {name!r} was already observed; declare its buckets "
                                   "before the first observation", metric=name)
            self._bounds[name] = bounds

    def reset(self) -> None:
        """Clear every local value (definitions stay; mirrored Prometheus metrics keep theirs).

        Example:
            >>> m = Metrics()
            >>> m.increment("hits")
            >>> m.reset()
            >>> m.snapshot()["counters"]
            {}
        """
        with self._lock:
            self._counters.clear()
            self._gauges.clear()
            self._histograms.clear()
            for schema in self._schema.values():
                schema.series.clear()
            for (name, canon), fn in self._functions.items():
                self._function_cell(name, canon, fn)
            for binding in self._bound:
                binding.cell = None

    @property
    def registry(self) -> Any:
        """This node's own ``prometheus_client.CollectorRegistry`` (created on first use).

        Serve it with prometheus_client, e.g.
        ``prometheus_client.start_http_server(8000, registry=node.metrics.registry)``.
        """
        reg = self._registry
        if reg is None:
            with self._lock:
                reg = self._registry
                if reg is None:
                    CollectorRegistry = _prometheus("metrics.registry").CollectorRegistry

                    reg = CollectorRegistry(auto_describe=False)
                    reg.register(_LocalCollector(self))
                    self._registry = reg
        return reg

    def exposition(self) -> str:
        """This node's metrics in the Prometheus text format (version 0.0.4).

        Example:
            >>> m = Metrics(MetricsConfig(namespace="shop"))
            >>> m.gauge("stock", 7, labels={"item": "tea"})
            >>> 'shop_stock{item="tea"} 7.0' in m.exposition()
            True
        """
        generate_latest = _prometheus("metrics.exposition()").generate_latest
        return str(generate_latest(self.registry).decode("utf-8"))

    def __repr__(self) -> str:
        kinds: dict[str, int] = {}
        for schema in self._schema.values():
            kinds[schema.kind] = kinds.get(schema.kind, 0) + 1
        shown = ", ".join(f"{n} {k}s" for k, n in sorted(kinds.items())) or "empty"
        return f"<Metrics backend={self.config.backend!r} ({shown})>"

    # -- slow paths: first sight of a series --------------------------------------------------

    def _increment_slow(self, name: str, value: Any, labels: Any) -> None:
        number = _number(value, "increment", name)
        if number < 0:
            raise _negative_step(name, number)
        cell = self._cell(self._counters, "counter", "increment", name, labels)
        self._apply_increment(cell, number)

    def _apply_increment(self, cell: list[Any], value: float) -> None:
        cell[0] += value

    def _gauge_slow(self, name: str, value: Any, labels: Any) -> None:
        number = _number(value, "gauge", name)
        cell = self._cell(self._gauges, "gauge", "gauge", name, labels)
        self._apply_gauge(cell, number)

    def _apply_gauge(self, cell: list[Any], value: float) -> None:
        cell[0] = value

    def _histogram_cell(self, name: str, labels: Any, call: str) -> _Hist:
        cell = self._cell(self._histograms, "histogram", call, name, labels)
        return cell  # type: ignore[no-any-return]

    def _cell(self, index: dict[Any, Any], kind: str, call: str, name: Any, labels: Any) -> Any:
        canon = _canonical_labels(call, name, labels, _RESERVED_LABELS.get(kind, frozenset()))
        with self._lock:
            schema = self._define(name, kind, tuple(k for k, _ in canon), call)
            cell = schema.series.get(canon)
            if cell is None:
                cell = schema.series[canon] = self._new_cell(schema, canon)
            elif cell.__class__ is _FnGauge:
                raise MetricsError(
                    f"{call}({name!r}): the series {_series_key(name, canon)} is read from a "
                    "gauge_callback; remove_gauge_callback() it first or use another name.",
                    metric=name)
            try:
                index[name if labels is None else (name, tuple(labels.items()))] = cell
            except TypeError:
                pass  # an unhashable label value: valid after str(), but always the slow path
        return cell

    def _new_cell(self, schema: _Schema, canon: tuple[tuple[str, str], ...]) -> Any:
        if schema.kind in ("counter", "gauge"):
            return [0, None]
        return _Hist(self._bounds.get(schema.name) or tuple(self.config.buckets))

    def _define(self, name: Any, kind: str, labelnames: tuple[str, ...], call: str) -> _Schema:
        schema = self._schema.get(name) if isinstance(name, str) else None
        if schema is not None:
            if schema.kind != kind:
                raise MetricsError(
                    f"{call}({name!r}): metric {name!r} is a {schema.kind}, it cannot also be "
                    f"used as a {kind} (Prometheus gives one name one type); use another name, "
                    f"such as {name + '_' + kind!r}.", metric=name)
            if schema.labelnames != labelnames:
                raise MetricsError(
                    f"{call}({name!r}): metric {name!r} was first used with label names "
                    f"{list(schema.labelnames)}, now with {list(labelnames)}; every call must "
                    "give the same label names (Prometheus requires a fixed label set per "
                    "metric). Pass the missing labels with a value such as '' or use another "
                    "metric name.", metric=name)
            return schema
        if not isinstance(name, str) or not _NAME_RE.match(name):
            hint = f" Try {_suggest(name)!r}." if isinstance(name, str) and name else ""
            raise MetricsError(
                f"{call}({name!r}): invalid metric name. Prometheus metric names use letters, "
                "digits, underscores and colons and do not start with a digit "
                f"([a-zA-Z_:][a-zA-Z0-9_:]*).{hint}", metric=str(name))
        ns = self.config.namespace
        exported = f"{ns}_{name}" if ns else name
        series = _exported_series(kind, exported)
        for s in series:
            owner = self._taken.get(s)
            if owner is not None:
                raise MetricsError(
                    f"{call}({name!r}): the {kind} {name!r} would export the series {s!r}, "
                    f"which metric {owner!r} already exports ({self._schema[owner].kind}); "
                    "rename one of them.", metric=name)
        schema = _Schema(name, kind, labelnames, exported)
        self._define_backend(schema)
        for s in series:
            self._taken[s] = name
        self._schema[name] = schema
        return schema

    def _define_backend(self, schema: _Schema) -> None:
        """Hook for the mirrored backend: create the prometheus_client metric."""


class _MirroredMetrics(Metrics):
    """``backend: prometheus``: every call also updates a ``prometheus_client`` metric."""

    __slots__ = ()

    def increment(self, name: str, value: float = 1,
                  labels: Mapping[str, Any] | None = None) -> None:
        try:
            cell = self._counters[name if labels is None else (name, tuple(labels.items()))]
            if value < 0:
                raise _negative_step(name, value)
            cell[1].inc(value)
            cell[0] += value
        except (KeyError, TypeError, AttributeError):
            self._increment_slow(name, value, labels)

    def gauge(self, name: str, value: float, labels: Mapping[str, Any] | None = None) -> None:
        try:
            cell = self._gauges[name if labels is None else (name, tuple(labels.items()))]
            cell[0] = value + 0
            cell[1].set(value)
        except (KeyError, TypeError, AttributeError):
            self._gauge_slow(name, value, labels)

    def _apply_increment(self, cell: list[Any], value: float) -> None:
        cell[1].inc(value)
        cell[0] += value

    def _function_backend(self, schema: _Schema, canon: tuple[tuple[str, str], ...],
                          cell: _FnGauge) -> Any:
        prom = schema.prom
        child = prom.labels(*(v for _, v in canon)) if canon else prom
        child.set_function(functools.partial(Metrics._read_function, schema, canon, cell))
        return child

    def _drop_function_backend(self, schema: _Schema, canon: tuple[tuple[str, str], ...],
                               cell: _FnGauge) -> None:
        if canon:
            schema.prom.remove(*(v for _, v in canon))
        else:  # an unlabelled prometheus_client gauge cannot be removed: it reads 0 again
            cell.child.set_function(lambda: 0.0)

    def _apply_gauge(self, cell: list[Any], value: float) -> None:
        cell[1].set(value)
        cell[0] = value

    @property
    def registry(self) -> Any:
        reg = self._registry
        if reg is None:
            with self._lock:
                reg = self._registry
                if reg is None:
                    from prometheus_client import CollectorRegistry

                    reg = self._registry = CollectorRegistry()
        return reg

    def _new_cell(self, schema: _Schema, canon: tuple[tuple[str, str], ...]) -> Any:
        prom = schema.prom
        child = prom.labels(*(v for _, v in canon)) if canon else prom
        if schema.kind in ("counter", "gauge"):
            return [0, child]
        return _MirroredHist(self._bounds.get(schema.name) or tuple(self.config.buckets), child)

    def _define_backend(self, schema: _Schema) -> None:
        import prometheus_client as prom

        doc = f"{schema.kind} {schema.name} (onex-compose)"
        kwargs: dict[str, Any] = {"labelnames": schema.labelnames, "registry": self.registry}
        if schema.kind == "counter":
            schema.prom = prom.Counter(schema.exported, doc, **kwargs)
        elif schema.kind == "gauge":
            schema.prom = prom.Gauge(schema.exported, doc, **kwargs)
        else:
            schema.prom = prom.Histogram(
                schema.exported, doc,
                buckets=self._bounds.get(schema.name) or tuple(self.config.buckets), **kwargs)


class _LocalCollector:
    """Turns the local store into Prometheus metric families at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )
        from prometheus_client.utils import floatToGoString

        m = self._metrics
        with m._lock:
            schemas = [(s, list(s.series.items())) for s in m._schema.values()]
        for schema, series in schemas:
            doc = f"{schema.kind} {schema.name} (onex-compose)"
            names = list(schema.labelnames)
            family: Any
            if schema.kind == "counter":
                family = CounterMetricFamily(schema.exported, doc, labels=names)
                for canon, cell in series:
                    family.add_metric([v for _, v in canon], float(cell[0]))
            elif schema.kind == "gauge":
                family = GaugeMetricFamily(schema.exported, doc, labels=names)
                for canon, cell in series:
                    value = (m._read_function(schema, canon, cell) if cell.__class__ is _FnGauge
                             else cell[0])
                    family.add_metric([v for _, v in canon], float(value))
            else:
                family = HistogramMetricFamily(schema.exported, doc, labels=names)
                for canon, hist in series:
                    buckets, running = [], 0
                    for bound, count in zip(hist.bounds, hist.counts, strict=False):
                        running += count
                        buckets.append((floatToGoString(bound), running))  # type: ignore[no-untyped-call]
                    buckets.append(("+Inf", hist.count))
                    family.add_metric([v for _, v in canon], buckets, float(hist.sum))
            yield family


# -- helpers ----------------------------------------------------------------------------------


def _negative_step(name: Any, value: Any) -> MetricsError:
    return MetricsError(
        f"increment({name!r}, {value!r}): a counter only goes up, so the step must be >= 0 "
        "(as prometheus_client's Counter.inc). Use a gauge for a value that goes down.",
        metric=str(name))


def _suggest(name: str) -> str:
    fixed = re.sub(r"[^a-zA-Z0-9_:]", "_", name)
    return "_" + fixed if fixed[:1].isdigit() else fixed


def _number(value: Any, call: str, name: Any) -> Any:
    if isinstance(value, int | float):
        return value
    if isinstance(value, numbers.Number) and not isinstance(value, complex):
        try:  # Decimal, Fraction, numpy scalars
            return float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            pass
    raise MetricsError(
        f"{call}({name!r}, {value!r}): the value must be a number (int or float), got "
        f"{type(value).__name__}.", metric=str(name))


def _label_value(call: str, name: Any, key: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Enum):
        value = value.value
        if isinstance(value, str):
            return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    raise MetricsError(
        f"{call}({name!r}): label {key!r} has a {type(value).__name__} value {value!r}; label "
        "values must be strings or numbers.", metric=str(name))


def _canonical_labels(call: str, name: Any, labels: Any,
                      reserved: frozenset[str]) -> tuple[tuple[str, str], ...]:
    if labels is None:
        return ()
    if not isinstance(labels, Mapping):
        raise MetricsError(
            f"{call}({name!r}): labels must be a mapping of label names to values, such as "
            f"{{'method': 'GET'}}; got {type(labels).__name__}.", metric=str(name))
    out = []
    for key, value in labels.items():
        if not isinstance(key, str) or not _LABEL_RE.match(key) or key.startswith("__"):
            raise MetricsError(
                f"{call}({name!r}): invalid label name {key!r}. Label names use letters, "
                "digits and underscores, do not start with a digit and do not start with "
                "'__' (reserved by Prometheus).", metric=str(name))
        if key in reserved:
            raise MetricsError(
                f"{call}({name!r}): label name {key!r} is reserved for histograms by "
                "Prometheus (bucket bounds); use another label name.", metric=str(name))
        out.append((key, _label_value(call, name, key, value)))
    out.sort()
    return tuple(out)


def _exported_series(kind: str, exported: str) -> tuple[str, ...]:
    if kind == "counter":
        base = exported.removesuffix("_total")
        return (base, base + "_total", base + "_created")
    if kind == "gauge":
        return (exported,)
    return (exported, exported + "_bucket", exported + "_count", exported + "_sum",
            exported + "_created")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _series_key(name: str, labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


def _hist_dict(hist: _Hist) -> dict[str, Any]:
    buckets: dict[str, int] = {}
    running = 0
    for bound, count in zip(hist.bounds, hist.counts, strict=False):
        running += count
        buckets[repr(float(bound))] = running
    buckets["+Inf"] = hist.count
    empty = hist.count == 0
    return {"count": hist.count, "sum": hist.sum, "min": None if empty else hist.min,
            "max": None if empty else hist.max, "buckets": buckets}


def _prometheus(what: str) -> Any:
    """Import prometheus_client, or say how to install it (it is the ``[prometheus]`` extra)."""
    try:
        import prometheus_client
    except ModuleNotFoundError as exc:
        if exc.name != "prometheus_client":
            raise
        raise ModuleNotFoundError(
            f"{what} needs prometheus_client, which is not installed. Install it with: pip "
            "install 'onex-compose[prometheus]' (snapshot() works without it).",
            name="prometheus_client") from None
    return prometheus_client


def _require_prometheus() -> None:
    """``backend: prometheus`` without prometheus_client is a setup error naming the fix."""
    import importlib.util

    if importlib.util.find_spec("prometheus_client") is None:
        from onex_compose.exceptions import ConfigurationError

        raise ConfigurationError(
            "metrics: backend 'prometheus' needs prometheus_client, which is not installed. "
            "Install it with: pip install 'onex-compose[prometheus]' (or use backend: memory, "
            "which still exposes Prometheus text through exposition() once it is installed).",
            capability="metrics")


def build_metrics(config: MetricsConfig | None = None, *,
                  clock: Callable[[], float] = time.perf_counter) -> Metrics:
    """The facility for ``config`` (the mirrored variant for ``backend: prometheus``)."""
    config = config or MetricsConfig()
    if config.backend == "prometheus":
        _require_prometheus()
    cls = _MirroredMetrics if config.backend == "prometheus" else Metrics
    return cls(config, clock=clock)


# -- the mixin --------------------------------------------------------------------------------


class MixinMetrics:
    """Performance metrics for a node: ``self.metrics`` (counters, gauges, histograms, timers).

    Capability ``metrics`` (alias ``performance_metrics``); requires nothing. Configured by the
    node contract's ``metrics`` subcontract (:class:`MetricsConfig`).

    Example:
        >>> from onex_compose import NodeCompute
        >>> class Service(NodeCompute, MixinMetrics):
        ...     async def process(self, data):
        ...         with self.metrics.timer("compute_duration"):
        ...             self.metrics.increment("computations")
        ...             return data * 2
        >>> import asyncio
        >>> node = Service(capability_config={"metrics": {"namespace": "demo"}})
        >>> asyncio.run(node.process(21))
        42
        >>> node.metrics.snapshot()["counters"]["computations"]
        1
        >>> "demo_computations_total 1.0" in node.metrics.exposition()
        True
    """

    __onex_capability__ = "metrics"
    __slots__ = ()

    def setup_metrics(self, config: MetricsConfig | Mapping[str, Any] | None = None) -> None:
        """Configure ``self.metrics`` (again: reconfigured in place, values cleared)."""
        cfg = coerce_config(MetricsConfig, config, "metrics")
        current = getattr(self, "metrics", None)
        if isinstance(current, Metrics):
            current.configure(cfg)
        else:
            self.metrics = build_metrics(cfg)  # type: ignore[misc]  # the node has a __dict__

    @facility
    def metrics(self) -> Metrics:
        """The node's metrics facility (a default one when ``setup_metrics`` never ran)."""
        return Metrics()

    def _guard_metrics(self, call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        """Wrap ``process()``: time each call into ``process_duration{outcome=...}``."""
        node = self

        async def metered(*args: Any, **kwargs: Any) -> Any:
            metrics: Metrics = node.metrics
            if not metrics.config.instrument_process:
                return await call(*args, **kwargs)
            clock = metrics.clock
            start = clock()
            try:
                result = await call(*args, **kwargs)
            except Exception:
                metrics.histogram("process_duration", clock() - start, _ERROR)
                raise
            except BaseException:
                metrics.histogram("process_duration", clock() - start, _CANCELLED)
                raise
            metrics.histogram("process_duration", clock() - start, _OK)
            return result

        metered.__wrapped__ = call  # type: ignore[attr-defined]
        return metered

    def _guard_sync_metrics(self, call: Callable[..., Any]) -> Callable[..., Any]:
        """The sync twin of :meth:`_guard_metrics`, for a plain ``def process``."""
        node = self

        def metered_sync(*args: Any, **kwargs: Any) -> Any:
            metrics: Metrics = node.metrics
            if not metrics.config.instrument_process:
                return call(*args, **kwargs)
            clock = metrics.clock
            start = clock()
            try:
                result = call(*args, **kwargs)
            except Exception:
                metrics.histogram("process_duration", clock() - start, _ERROR)
                raise
            except BaseException:
                metrics.histogram("process_duration", clock() - start, _CANCELLED)
                raise
            metrics.histogram("process_duration", clock() - start, _OK)
            return result

        metered_sync.__wrapped__ = call  # type: ignore[attr-defined]
        return metered_sync
