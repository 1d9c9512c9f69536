"""The profiler facility: sampling, captures, latency histograms, slow calls and the report.

``Profiler`` is what ``node.profiler`` is (see the package doc for the semantics); it also works
alone (``Profiler({...})``) around any function through ``profiled``. ``ProfilingConfig`` is the
capability's subcontract, ``ProfilerBusyError`` the one error of its own.
"""

from __future__ import annotations

import functools
import heapq
import importlib.util
import inspect
import os
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, Protocol, TypeVar, cast, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from onex_compose import ConfigurationError, OnexError, coerce_config
from onex_compose.capabilities import _context
from onex_compose.capabilities.profiling._latency import LatencyHistogram, LatencySummary
from onex_compose.capabilities.profiling._report import (
    MemorySite,
    Profile,
    ProfileReport,
    SlowCall,
    guard_codes,
)

__all__ = [
    "Capture",
    "Profiler",
    "ProfilerBusyError",
    "ProfilingConfig",
    "ProfilingProtocol",
    "profiled",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_correlation = _context.correlation_id
_busy_threads: set[int] = set()  # threads with a running profile (of any node)
_get_ident = threading.get_ident
_MEMORY_FRAMES = 1


class ProfilerBusyError(OnexError, RuntimeError):
    """``capture()`` was asked for while this thread is already being profiled.

    Only explicit captures raise it; a sampled call that finds the thread busy runs unprofiled
    and is counted in ``profiling_skipped_total{reason="busy"}``. Not retriable (retrying at
    once finds the same profile running) and neutral for a circuit breaker.

    Example:
        >>> print(ProfilerBusyError("warmup"))  # doctest: +ELLIPSIS
        Cannot capture 'warmup': this thread is already being profiled ...
    """

    onex_retriable = False
    onex_breaker_neutral = True

    def __init__(self, label: str) -> None:
        self.label = label
        super().__init__(
            f"Cannot capture {label!r}: this thread is already being profiled (a capture or a "
            "sampled call is running, or another profiler is set with sys.setprofile). cProfile "
            "and pyinstrument profile one thing per thread: end the other capture first, or "
            "capture in another thread.")

    def __reduce__(self) -> Any:
        return (ProfilerBusyError, (self.label,), dict(self.__dict__))


class ProfilingConfig(BaseModel):
    """The profiling subcontract (every key of ``profiling_config`` in ``mixin_profiling.yaml``).

    Example:
        >>> ProfilingConfig(sample_rate=0.1).mode
        'deterministic'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    sample_rate: float = Field(default=0.0, ge=0.0, le=1.0,
                               description="probability (0..1) that a process() call is profiled")
    mode: Literal["deterministic", "sampling"] = Field(
        default="deterministic",
        description="deterministic (cProfile, stdlib) or sampling (pyinstrument, the "
                    "[profiling] extra)")
    interval: float = Field(default=0.001, gt=0.0, le=1.0,
                            description="sampling interval (s), sampling mode")
    latency: bool = Field(default=True,
                          description="per-operation latency quantiles (within 1%)")
    slow_call_threshold: float | None = Field(
        default=None, ge=0.0,
        description="calls slower than this (s) are counted, logged with their trace id, and "
                    "trigger profiling of the next profile_after_slow calls; null: off")
    profile_after_slow: int = Field(default=0, ge=0,
                                    description="calls profiled after each slow call")
    max_profiles: int = Field(default=100, ge=1, le=100_000,
                              description="profiles kept (a ring)")
    keep: Literal["slowest", "latest"] = Field(default="slowest",
                                               description="which profiles the ring keeps")
    memory: bool = Field(default=False,
                         description="tracemalloc snapshot diff around profiled calls")
    report_top: int = Field(default=20, ge=1, le=10_000,
                            description="rows per report section")
    seed: int | None = Field(default=None, description="seeds the sampling RNG (tests)")


@runtime_checkable
class ProfilingProtocol(Protocol):
    """What ``self.profiler`` offers (the contract's actions)."""

    def capture(self, label: str = "capture", mode: str | None = None,
                memory: bool | None = None) -> Capture: ...

    def report(self, top: int | None = None) -> ProfileReport: ...

    def latency(self, name: str = "process") -> LatencySummary: ...

    def reset(self) -> None: ...


def _require_pyinstrument() -> None:
    if importlib.util.find_spec("pyinstrument") is None:
        raise ConfigurationError(
            "profiling mode 'sampling' needs pyinstrument, which is not installed. Install it "
            "with: pip install 'onex-compose[profiling]' (or use mode: deterministic, which "
            "needs only the standard library's cProfile)", capability="profiling")


class _Running:
    """A profile in progress: the raw profiler, its start time and the memory baseline."""

    __slots__ = ("label", "mem_base", "mem_started", "mode", "raw", "start", "thread",
                 "trace_id")

    def __init__(self, label: str, mode: str, raw: Any, thread: int) -> None:
        self.label, self.mode, self.raw, self.thread = label, mode, raw, thread
        self.start = 0.0
        self.mem_base: Any = None
        self.mem_started = False
        self.trace_id: str | None = None


class Capture:
    """An on-demand profile of a block: ``with``/``async with profiler.capture(...) as p``.

    After the block, ``p.profile`` is the kept :class:`Profile` and ``p.report()`` reports it
    alone.

    Raises:
        ProfilerBusyError: on entry, when this thread is already being profiled.
    """

    __slots__ = ("_memory", "_mode", "_profiler", "_running", "label", "profile")

    def __init__(self, profiler: Profiler, label: str, mode: str, memory: bool) -> None:
        self._profiler, self.label, self._mode, self._memory = profiler, label, mode, memory
        self._running: _Running | None = None
        self.profile: Profile | None = None

    def __repr__(self) -> str:
        state = ("running" if self._running is not None
                 else "done" if self.profile is not None else "not started")
        return f"Capture({self.label!r}, mode={self._mode!r}, {state})"

    def __enter__(self) -> Capture:
        run = self._profiler._begin(self.label, self._mode, self._memory)
        if run is None:
            raise ProfilerBusyError(self.label)
        self._running = run
        return self

    def __exit__(self, *exc: object) -> None:
        run, self._running = self._running, None
        if run is not None:
            self.profile = self._profiler._end(run, time.perf_counter() - run.start)

    async def __aenter__(self) -> Capture:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__(*exc)

    def report(self, top: int | None = None) -> ProfileReport:
        """This capture's profile alone, as a report (empty before the block ended)."""
        p = self._profiler
        if self.profile is None:
            return ProfileReport.empty()
        return ProfileReport.build([self.profile], top=top or p.config.report_top)


class Profiler:
    """The profiling facility (``node.profiler``): sampling, latency, captures and the report.

    Args:
        config: the validated config (or a mapping).
        metrics: the node's metrics facility (``None``: nothing is counted).
        tracer: the node's tracer when tracing is composed (trace ids, slow-call span events).
        node_type: the node's class (recognises its guard closures in sampling profiles).
        rng: the sampling RNG (default ``random.Random(config.seed)``).
        logger: where slow calls are logged (the node's ``log`` bound with
            ``capability="profiling"`` when composed; default: the capabilities' loguru logger).
            Like every record of the library, it is silent until the application calls
            ``logger.enable("onex_compose")``.

    Attributes:
        clock: the duration clock (default ``time.perf_counter``; injectable).

    Example:
        >>> p = Profiler({"latency": True})
        >>> def work(x):
        ...     return x + 1
        >>> timed = p.profiled("work")(work)
        >>> timed(1), p.latency("work").count
        (2, 1)
    """

    def __init__(self, config: ProfilingConfig | Mapping[str, Any] | None = None, *,
                 metrics: Any = None, tracer: Any = None, node_type: type | None = None,
                 name: str = "profiler", rng: random.Random | None = None,
                 logger: Any = None) -> None:
        cfg = coerce_config(ProfilingConfig, config, "profiling")
        if cfg.mode == "sampling":
            _require_pyinstrument()
        self.config: ProfilingConfig = cfg
        self.name = name
        self.metrics = metrics
        self.tracer = tracer
        self.logger = logger
        self.node_type = node_type
        self._clock: Callable[[], float] = time.perf_counter
        #: called when the clock is replaced (the mixin rebinds the node's process() chain)
        self._rebind: Callable[[], None] | None = None
        self.rng = rng if rng is not None else random.Random(cfg.seed)
        self._rate = cfg.sample_rate
        self._threshold = cfg.slow_call_threshold
        self._pending = 0  # calls still to profile after a slow one
        self._seq = 0
        self._lock = threading.Lock()
        self._kept: list[tuple[float, int, Profile]] = []  # a min-heap (keep: slowest)
        self._latest: deque[Profile] = deque(maxlen=cfg.max_profiles)
        self._slow: list[tuple[float, int, SlowCall]] = []  # a min-heap of slow calls
        self._hists: dict[str, LatencyHistogram] = {}
        self._guards: dict[tuple[str, int], str] | None = None
        self._profile_counters: dict[str, Callable[..., None]] = {}  # mode -> bound counter
        #: the guard's one comparison: 0 off, 1 latency only, 2 the full path
        self._guard_mode = 0
        #: the process() histogram the guard records into (``None``: latency off)
        self._process_hist: LatencyHistogram | None = None
        if cfg.latency:
            self._process_hist = self._hists["process"] = LatencyHistogram()
        self._update_mode()

    def __repr__(self) -> str:
        c = self.config
        kept = len(self._kept) + len(self._latest)
        return (f"Profiler({self.name!r}, sample_rate={c.sample_rate}, mode={c.mode!r}, "
                f"latency={c.latency}, kept={kept}/{c.max_profiles})")

    @property
    def clock(self) -> Callable[[], float]:
        """The duration clock (seconds; default ``time.perf_counter``). Assigning one rebinds
        the node's ``process()`` guard, which holds it."""
        return self._clock

    @clock.setter
    def clock(self, fn: Callable[[], float]) -> None:
        if not callable(fn):
            raise TypeError(f"profiler.clock must be a callable returning seconds, got {fn!r}")
        self._clock = fn
        if self._rebind is not None:
            self._rebind()

    def _update_mode(self) -> None:
        if self._rate > 0.0 or self._threshold is not None or self._pending:
            self._guard_mode = 2
        else:
            self._guard_mode = 1 if self._process_hist is not None else 0

    # -- the public API -----------------------------------------------------------------------

    def capture(self, label: str = "capture", mode: str | None = None,
                memory: bool | None = None) -> Capture:
        """Profile a block: ``with`` or ``async with node.profiler.capture("warmup") as p``.

        Args:
            label: names the profile in the report.
            mode: ``"deterministic"`` or ``"sampling"`` (default: the configured mode).
            memory: add a tracemalloc snapshot diff (default: the configured ``memory``).

        Raises:
            ValueError: an unknown mode.
            ConfigurationError: ``sampling`` without pyinstrument.
        """
        m = self.config.mode if mode is None else mode
        if m not in ("deterministic", "sampling"):
            raise ValueError(f"capture mode must be 'deterministic' or 'sampling', got {m!r}")
        if m == "sampling":
            _require_pyinstrument()
        return Capture(self, label, m, self.config.memory if memory is None else bool(memory))

    def profiled(self, name: str) -> Callable[[F], F]:
        """Decorate a sync or async function: latency quantiles under ``name``, and sampled
        profiles at ``sample_rate`` (the slow-call rules apply too).

        Example:
            >>> import asyncio
            >>> p = Profiler()
            >>> @p.profiled("price")
            ... async def price(qty):
            ...     return qty * 2
            >>> asyncio.run(price(3)), p.latency("price").count
            (6, 1)
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"profiled() needs an operation name (a non-empty string), "
                             f"got {name!r}")

        def decorate(fn: F) -> F:
            if inspect.iscoroutinefunction(fn):
                @functools.wraps(fn)
                async def timed(*args: Any, **kwargs: Any) -> Any:
                    return await self._run_async(fn, args, kwargs, self._hist(name), name)
                return cast(F, timed)

            @functools.wraps(fn)
            def timed_sync(*args: Any, **kwargs: Any) -> Any:
                return self._run_sync(fn, args, kwargs, self._hist(name), name)
            return cast(F, timed_sync)

        return decorate

    def latency(self, name: str = "process") -> LatencySummary:
        """The latency summary of operation ``name`` (count, p50, p95, p99, max, mean).

        Raises:
            KeyError: no operation of that name (or ``latency`` is off); the message lists
                the known ones.
        """
        hist = self._hists.get(name)
        if hist is None:
            known = ", ".join(sorted(self._hists)) or "none"
            why = ("latency is off (profiling_config.latency: false)" if not self.config.latency
                   else f"known operations: {known}")
            raise KeyError(f"no latency for operation {name!r}: {why}. process() is 'process'; "
                           "other operations are named by @profiled(name).")
        return hist.summary()

    def latencies(self) -> dict[str, LatencySummary]:
        """Every operation's latency summary."""
        return {k: h.summary() for k, h in sorted(self._hists.items())}

    def histogram(self, name: str = "process") -> LatencyHistogram | None:
        """The raw histogram of an operation (``None`` when there is none), e.g. for
        ``quantile(0.999)`` or merging across nodes."""
        return self._hists.get(name)

    def profiles(self) -> list[Profile]:
        """The kept profiles, slowest first (``keep: slowest``) or oldest first (``latest``)."""
        with self._lock:
            if self.config.keep == "latest":
                return list(self._latest)
            return [p for _d, _s, p in sorted(self._kept, key=lambda t: (-t[0], t[1]))]

    def report(self, top: int | None = None) -> ProfileReport:
        """The bottleneck report over the kept profiles (empty, ``profiles: 0``, when none)."""
        n = top or self.config.report_top
        with self._lock:
            slow = [(seq, call) for _d, seq, call in self._slow]
        return ProfileReport.build(self.profiles(), top=n, slow=slow,
                                   latencies=self.latencies())

    def reset(self) -> None:
        """Forget every profile, slow call and latency (the configuration stays)."""
        with self._lock:
            self._kept.clear()
            self._latest.clear()
            self._slow.clear()
            self._pending = 0
            for h in self._hists.values():
                h.clear()
        self._update_mode()

    # -- internals: the call paths ------------------------------------------------------------

    def _hist(self, name: str) -> LatencyHistogram | None:
        if not self.config.latency:
            return None
        hist = self._hists.get(name)
        if hist is None:
            hist = self._hists.setdefault(name, LatencyHistogram())
        return hist

    def _sample(self) -> bool:
        if self._pending:
            with self._lock:
                if self._pending:
                    self._pending -= 1
                    if not self._pending:
                        self._update_mode()
                    return True
        rate = self._rate
        if rate <= 0.0:
            return False
        return bool(self.rng.random() < rate)

    async def _run_async(self, call: Callable[..., Awaitable[T]], args: tuple[Any, ...],
                         kwargs: Mapping[str, Any], hist: LatencyHistogram | None,
                         op: str) -> T:
        run = self._begin(op, self.config.mode, self.config.memory) if self._sample() else None
        clock = self.clock
        t0 = clock()
        try:
            return await call(*args, **kwargs)
        finally:
            d = clock() - t0
            seq = None if run is None else self._end(run, d).seq
            self._after(d, hist, op, seq)

    def _run_sync(self, call: Callable[..., T], args: tuple[Any, ...],
                  kwargs: Mapping[str, Any], hist: LatencyHistogram | None, op: str) -> T:
        run = self._begin(op, self.config.mode, self.config.memory) if self._sample() else None
        clock = self.clock
        t0 = clock()
        try:
            return call(*args, **kwargs)
        finally:
            d = clock() - t0
            seq = None if run is None else self._end(run, d).seq
            self._after(d, hist, op, seq)

    def _after(self, d: float, hist: LatencyHistogram | None, op: str,
               seq: int | None) -> None:
        if hist is not None:
            hist.record(d)
        threshold = self._threshold
        if threshold is not None and d > threshold:
            self._slow_call(d, threshold, op, seq)

    def _slow_call(self, d: float, threshold: float, op: str, seq: int | None) -> None:
        """Count, keep, log and trace one slow call (``seq``: its profile's, when profiled,
        so the report lists the call once)."""
        trace_id = self._trace_id()
        corr = _correlation.get()
        with self._lock:
            if seq is None:
                self._seq += 1
                seq = self._seq
            item = (d, seq, SlowCall(d, trace_id, corr))
            if len(self._slow) < self.config.report_top:
                heapq.heappush(self._slow, item)
            elif d > self._slow[0][0]:
                heapq.heapreplace(self._slow, item)
            if self.config.profile_after_slow:
                self._pending = self.config.profile_after_slow
        self._update_mode()
        if self.metrics is not None:
            self.metrics.increment("profiling_slow_calls_total")
        from onex_compose.capabilities._log import logger as default_logger

        logger = self.logger if self.logger is not None else default_logger
        logger.bind(operation=op, duration_s=d, threshold_s=threshold, trace_id=trace_id,
                    correlation_id=corr).warning(
            "slow call: {} took {:.6f} s (threshold {} s; trace {})", op, d, threshold,
            trace_id or "-")
        tracer = self.tracer
        if tracer is not None:
            try:
                tracer.add_event("profiling.slow_call", {
                    "operation": op, "duration_s": d, "threshold_s": threshold})
            except Exception:
                logger.opt(exception=True).debug("profiling: could not add the slow-call event")

    def _trace_id(self) -> str | None:
        tracer = self.tracer
        if tracer is None:
            return None
        try:
            tid = tracer.current_trace_id()
        except Exception:
            return None
        return None if tid is None else str(tid)

    def _begin(self, label: str, mode: str, memory: bool) -> _Running | None:
        """Start a profile in this thread; ``None`` (counted as a skip) when it is busy."""
        ident = _get_ident()
        if ident in _busy_threads or sys.getprofile() is not None:
            if self.metrics is not None:
                self.metrics.increment("profiling_skipped_total", labels={"reason": "busy"})
            return None
        _busy_threads.add(ident)
        try:
            mods = _modules or _load_modules()
            if mode == "sampling":
                raw: Any = mods["pyinstrument"].Profiler(interval=self.config.interval,
                                                         async_mode="enabled")
            else:
                raw = mods["cProfile"].Profile()  # looked up per call: a spy can replace it
            run = _Running(label, mode, raw, ident)
            run.trace_id = self._trace_id()
            if memory:
                import tracemalloc

                if not tracemalloc.is_tracing():
                    tracemalloc.start(_MEMORY_FRAMES)
                    run.mem_started = True
                tracemalloc.reset_peak()
                run.mem_base = tracemalloc.take_snapshot()
            if mode == "sampling":  # the stack starts at the caller (not this helper)
                raw.start(caller_frame=sys._getframe(1), target_description=label)
            else:
                raw.enable()
            run.start = time.perf_counter()
        except BaseException:
            _busy_threads.discard(ident)
            raise
        return run

    def _end(self, run: _Running, duration: float) -> Profile:
        raw = run.raw
        try:
            if run.mode == "sampling":
                raw.stop()
                data = raw.last_session
            else:
                raw.disable()
                data = raw
            memory: list[MemorySite] | None = None
            peak: int | None = None
            if run.mem_base is not None:
                import tracemalloc

                memory, peak = _memory_diff(run.mem_base, self.config.report_top)
                if run.mem_started:
                    tracemalloc.stop()
        finally:
            _busy_threads.discard(run.thread)
        if self._guards is None:
            self._guards = guard_codes(self.node_type)
        with self._lock:
            self._seq += 1
            seq = self._seq
        profile = Profile(run.label, run.mode, data, duration, trace_id=run.trace_id,
                          correlation_id=_correlation.get(), memory=memory, peak_bytes=peak,
                          seq=seq, guards=self._guards)
        self._keep(profile)
        if self.metrics is not None:
            count = self._profile_counters.get(run.mode)
            if count is None:
                count = self._profile_counters[run.mode] = self.metrics.bind_counter(
                    "profiling_profiles_total", labels={"mode": run.mode})
            count()
        return profile

    def _keep(self, profile: Profile) -> None:
        with self._lock:
            if self.config.keep == "latest":
                self._latest.append(profile)
                return
            item = (profile.duration, profile.seq, profile)
            if len(self._kept) < self.config.max_profiles:
                heapq.heappush(self._kept, item)
            elif profile.duration > self._kept[0][0]:
                heapq.heapreplace(self._kept, item)


_modules: dict[str, Any] = {}


def _load_modules() -> dict[str, Any]:
    """cProfile and (when installed) pyinstrument, imported on the first profile."""
    import cProfile

    _modules["cProfile"] = cProfile
    if importlib.util.find_spec("pyinstrument") is not None:
        import pyinstrument

        _modules["pyinstrument"] = pyinstrument
    return _modules


def _memory_diff(base: Any, top: int) -> tuple[list[MemorySite], int]:
    """The top sites still allocated after the call (snapshot diff), and the traced peak."""
    import tracemalloc

    _current, peak = tracemalloc.get_traced_memory()
    after = tracemalloc.take_snapshot()
    skip = (tracemalloc.__file__, os.path.join(os.path.dirname(__file__), "*"),
            "<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>")
    filters = [tracemalloc.Filter(False, f) for f in skip]
    diff = after.filter_traces(filters).compare_to(base.filter_traces(filters), "lineno")
    sites = []
    for stat in diff:
        if stat.size_diff <= 0:
            continue
        frame = stat.traceback[0]
        sites.append(MemorySite(f"{frame.filename}:{frame.lineno}", stat.size_diff,
                                stat.count_diff))
        if len(sites) >= top:
            break
    return sites, peak


def profiled(name: str) -> Callable[[F], F]:
    """Decorator for methods of a node with profiling: latency (and sampling) in
    ``self.profiler`` under ``name``.

    Example:
        >>> import asyncio
        >>> from onex_compose import NodeCompute, compose
        >>> class Shop(compose(NodeCompute, ["profiling"])):
        ...     @profiled("price")
        ...     async def price(self, qty):
        ...         return qty * 2
        >>> node = Shop()
        >>> asyncio.run(node.price(3)), node.profiler.latency("price").count
        (6, 1)
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"profiled() needs an operation name (a non-empty string), got {name!r}")

    def decorate(fn: F) -> F:
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
                p: Profiler = self.profiler
                return await p._run_async(fn, (self, *args), kwargs, p._hist(name), name)
            return cast(F, timed)

        @functools.wraps(fn)
        def timed_sync(self: Any, *args: Any, **kwargs: Any) -> Any:
            p: Profiler = self.profiler
            return p._run_sync(fn, (self, *args), kwargs, p._hist(name), name)
        return cast(F, timed_sync)

    return decorate


