"""The ``profiling`` capability: ``self.profiler``, sampled call profiles and latency quantiles.

What it gives a node (seed 000's ``MixinProfiling``, "performance profiling and bottleneck
identification"):

* **Sampled profiles of ``process()``.** The guard ``_guard_profiling`` (rank 15: outside
  metrics and every flow-control guard, inside tracing and logging) profiles a call with
  probability ``sample_rate``: deterministic mode uses cProfile (stdlib), sampling mode
  pyinstrument (``[profiling]`` extra, ``async_mode="enabled"`` so time a call spends
  awaiting is attributed to it). The draw is ``rng.random() < sample_rate``, one draw per
  call, from ``random.Random(seed)`` (or an injected ``rng``), so a seeded run profiles
  predictable calls. Profiles are kept in a ring of ``max_profiles`` (``keep: slowest`` or
  ``latest``).
* **Latency quantiles** per operation (``latency: true``): ``process`` and every
  ``profiled(name)`` function, from a log-bucket histogram within 1% (``_latency.py``).
* **Slow calls**: calls slower than ``slow_call_threshold`` are counted
  (``profiling_slow_calls_total``), logged with their trace id, added to the report's
  ``slowest_calls``, add the span event ``profiling.slow_call`` when tracing is composed, and
  make the next ``profile_after_slow`` calls profiled whatever the sample rate.
* **On demand**: ``with node.profiler.capture(label=...)`` (or ``async with``) profiles any
  block; ``memory`` adds a tracemalloc snapshot diff (the top sites still allocated after the
  call, and the traced peak).
* **The report**: ``node.profiler.report()`` aggregates the kept profiles: top functions by
  self time, time per pipeline layer (capability, ``node``, ``other``; see ``_report.py``),
  the slowest calls with their trace and correlation ids; as JSON, text, or collapsed stacks.

Semantics worth knowing:

* **One profiled call per thread at a time** (cProfile and pyinstrument profile a thread; a
  second one would replace the first's hook). A sampled call that finds the thread's profiler
  busy (this node's, another node's, or any ``sys.setprofile`` profiler) runs unprofiled and is
  counted in ``profiling_skipped_total{reason="busy"}``. In deterministic mode other tasks that
  run on the event loop while a profiled call awaits appear in its profile; sampling mode
  attributes the await time to the profiled task instead.
* **Zero cost when off**: with ``sample_rate: 0`` and no ``slow_call_threshold`` the guard never
  creates a profiler. The comparison is made once, when the node binds its ``process()``
  chain: switched off entirely (``latency: false`` too) the guard is not in the chain at all;
  with ``latency`` on it is the clock reads and the histogram update
  (``benchmarks/bench_profiling.py``). ``setup_profiling`` rebinds the chain; replace the
  profiler through it (or ``_initialize_mixins``), not by assigning ``node.profiler``.
* Nothing loop-bound is created; the clock (``profiler.clock``, default
  ``time.perf_counter``) and the RNG are injectable.

Layout: ``_latency.py`` (the histogram), ``_report.py`` (profiles, layer attribution, the
report), ``_profiler.py`` (config, error, the :class:`Profiler` facility, ``profiled``),
``_cli.py`` (``onex profile``), this module (the mixin and its guards), and the contract
``mixin_profiling.yaml`` beside them.

Example:
    >>> import asyncio
    >>> from onex_compose import NodeCompute, compose
    >>> class Pricer(NodeCompute):
    ...     async def process(self, qty):
    ...         return qty * 2.5
    >>> node = compose(Pricer, ["profiling"])(
    ...     capability_config={"profiling": {"sample_rate": 1.0}})
    >>> asyncio.run(node.process(4))
    10.0
    >>> node.profiler.latency("process").count, node.profiler.report().profiles
    (1, 1)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar, cast

from onex_compose import coerce_config, facility, has_capability
from onex_compose.capabilities.profiling._latency import (
    BATCH,
    RELATIVE_ACCURACY,
    LatencyHistogram,
    LatencySummary,
)
from onex_compose.capabilities.profiling._profiler import (
    Capture,
    Profiler,
    ProfilerBusyError,
    ProfilingConfig,
    ProfilingProtocol,
    profiled,
)
from onex_compose.capabilities.profiling._report import (
    FunctionStat,
    MemorySite,
    Profile,
    ProfileReport,
    SlowCall,
)

__all__ = [
    "RELATIVE_ACCURACY",
    "Capture",
    "FunctionStat",
    "LatencyHistogram",
    "LatencySummary",
    "MemorySite",
    "MixinProfiling",
    "Profile",
    "ProfileReport",
    "Profiler",
    "ProfilerBusyError",
    "ProfilingConfig",
    "ProfilingProtocol",
    "SlowCall",
    "profiled",
]

T = TypeVar("T")


class MixinProfiling:
    """Sampled profiles, latency quantiles and a bottleneck report (seed 000's ``MixinProfiling``).

    Example:
        >>> from onex_compose import NodeCompute, compose
        >>> node = compose(NodeCompute, ["profiling"])()
        >>> node.profiler.report().profiles
        0
    """

    __onex_capability__ = "profiling"
    __slots__ = ()

    def setup_profiling(self, config: ProfilingConfig | Mapping[str, Any] | None = None) -> None:
        """Configure profiling (reconfiguring keeps an injected clock and RNG unless seeded)."""
        cfg = coerce_config(ProfilingConfig, config, "profiling")
        old = getattr(self, "profiler", None)
        tracer = self.tracer if has_capability(self, "tracing") else None  # type: ignore[attr-defined]
        log = None
        if cfg.slow_call_threshold is not None:  # the only records it writes (loguru is lazy)
            from onex_compose.capabilities.logging import bind_logger

            log = bind_logger(self, "profiling")  # node.log when logging is composed
        node = getattr(self, "node_id", None) or type(self).__name__
        rng = old.rng if isinstance(old, Profiler) and cfg.seed is None else None
        prof = Profiler(cfg, metrics=self.metrics, tracer=tracer,  # type: ignore[attr-defined]
                        node_type=type(self), name=f"{node}.profiler", rng=rng, logger=log)
        if isinstance(old, Profiler):
            prof.clock = old.clock
        setattr(self, "profiler", prof)  # noqa: B010 - the mixin declares no such slot
        # the process() guard is specialised to the profiler (and its clock) it was bound
        # with: rebind the chain now and whenever the clock is replaced
        node = self

        def rebind() -> None:
            setattr(node, "_onex_chain", None)  # noqa: B010

        prof._rebind = rebind
        rebind()

    @facility
    def profiler(self) -> Profiler:
        """The profiler (defaults when ``setup_profiling`` never ran)."""
        return Profiler(ProfilingConfig(), metrics=self.metrics,  # type: ignore[attr-defined]
                        node_type=type(self))

    @classmethod
    def _explain_profiling(cls, node: Any = None) -> str:
        """One line for ``explain()``: the guard's rank and what it does per call."""
        rank: Any = 15
        comp = getattr(cls, "__composition__", None)
        try:
            rank = comp.registry.get("profiling").guard_rank  # type: ignore[union-attr]
        except Exception:
            pass
        where = f"guard rank {rank} (outside metrics: the profile sees the whole pipeline)"
        if node is None:
            return f"{where}; defaults: latency on, sample_rate 0"
        c = node.profiler.config
        return (f"{where}; sample_rate {c.sample_rate} ({c.mode}), latency "
                f"{'on' if c.latency else 'off'}, slow_call_threshold {c.slow_call_threshold}")

    def _guard_profiling(self, call: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        """Time (and sample) every ``process()`` call (rank 15: sees the whole pipeline).

        The link is specialised when the chain is bound: switched off (``sample_rate: 0``, no
        threshold, ``latency: false``) it is ``call`` itself; latency only, it times the call
        into the histogram (inlined); otherwise it takes the full path (sampling, slow calls).
        ``setup_profiling`` rebinds the node's chain, so a reconfigured node gets the right
        link.
        """
        prof: Profiler = self.profiler
        mode = prof._guard_mode
        if not mode:
            return call
        if mode == 2:
            run = prof._run_async
            hist_or_none = prof._process_hist

            async def sampled_process(*args: Any, **kwargs: Any) -> T:
                return cast(T, await run(call, args, kwargs, hist_or_none, "process"))

            sampled_process.__wrapped__ = call  # type: ignore[attr-defined]
            return sampled_process
        hist: Any = prof._process_hist
        append = hist.buffer.append
        clock = prof.clock
        left = BATCH - len(hist.buffer)

        async def timed_process(*args: Any, **kwargs: Any) -> T:
            nonlocal left
            t0 = clock()
            try:
                if kwargs:
                    return await call(*args, **kwargs)
                return await call(*args)  # no empty-dict spread: ~12 ns
            finally:  # LatencyHistogram.record, inlined
                append(clock() - t0)
                left -= 1
                if left <= 0:  # every BATCH calls (a reader may have folded some already)
                    left = BATCH
                    hist.fold()

        timed_process.__wrapped__ = call  # type: ignore[attr-defined]
        return timed_process

    def _guard_sync_profiling(self, call: Callable[..., T]) -> Callable[..., T]:
        """The sync twin of :meth:`_guard_profiling`, for a plain ``def process``."""
        prof: Profiler = self.profiler
        mode = prof._guard_mode
        if not mode:
            return call
        if mode == 2:
            run = prof._run_sync
            hist_or_none = prof._process_hist

            def sampled_process_sync(*args: Any, **kwargs: Any) -> T:
                return cast(T, run(call, args, kwargs, hist_or_none, "process"))

            sampled_process_sync.__wrapped__ = call  # type: ignore[attr-defined]
            return sampled_process_sync
        hist: Any = prof._process_hist
        append = hist.buffer.append
        clock = prof.clock
        left = BATCH - len(hist.buffer)

        def timed_process_sync(*args: Any, **kwargs: Any) -> T:
            nonlocal left
            t0 = clock()
            try:
                if kwargs:
                    return call(*args, **kwargs)
                return call(*args)
            finally:  # LatencyHistogram.record, inlined
                append(clock() - t0)
                left -= 1
                if left <= 0:  # every BATCH calls (a reader may have folded some already)
                    left = BATCH
                    hist.fold()

        timed_process_sync.__wrapped__ = call  # type: ignore[attr-defined]
        return timed_process_sync
