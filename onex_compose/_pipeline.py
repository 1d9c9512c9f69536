"""The guarded ``process()`` pipeline: guard capabilities wrapping the node's operation.

A capability that guards an operation (retry, circuit breaker, rate limit, timeout, bulkhead,
caching, metrics, ...) defines ``_guard_<name>(self, call)`` returning an async callable that
wraps ``call``, and declares a ``guard_rank`` in its contract. For each class the engine:

* orders the guards by ``(guard_rank, name)``, outermost first: the order resilience4j and Polly
  use (observability and caching outermost, then retry, circuit breaker, rate limiter,
  per-attempt timeout, bulkhead innermost; see ``reference/capabilities.md`` A.7), whatever
  order the capabilities were listed or inherited in; ranks can be overridden per capability;
* wraps the *most-derived* ``process()`` exactly once: a subclass that overrides ``process()``
  keeps its guards, and one that calls ``super().process()`` does not run them twice (a context
  variable marks "already inside this node's pipeline, in this task", so the inner call goes
  straight to the parent's own body, while a task started inside ``process()`` is guarded);
* binds the chain once per instance, on the first call (``self._onex_chain``), so a call costs
  one context-variable set/reset plus the guards themselves.

The order is shown by :func:`onex_compose.explain` (``pipeline``) and stored on the class as
``__onex_pipeline__``.
"""

from __future__ import annotations

import functools
import inspect
from asyncio import current_task
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

__all__ = ["guard_order", "install_pipeline"]

# (node, task) while a node's pipeline runs: a task created inside process() copies the context,
# so the task is compared too, or that task's own later process() calls would skip the guards
_inside: ContextVar[tuple[object, object] | None] = ContextVar("onex_inside_pipeline", default=None)


def guard_order(cls: type, specs: Any) -> tuple[str, ...]:
    """Names of the guard capabilities of ``cls``, outermost first."""
    guards = []
    for spec in specs:
        if spec.guard_rank is None:
            continue
        if callable(getattr(cls, f"_guard_{spec.name}", None)):
            guards.append((spec.guard_rank, spec.name))
    return tuple(name for _rank, name in sorted(guards))


def _raw_process(cls: type) -> Callable[..., Any]:
    for klass in cls.__mro__:
        fn = vars(klass).get("process")
        if fn is not None:
            return getattr(fn, "__onex_raw__", fn)  # type: ignore[no-any-return]
    raise AttributeError("process")


def install_pipeline(cls: type, guards: tuple[str, ...]) -> None:
    """Wrap the most-derived ``process()`` of ``cls`` with its guard pipeline (once per class)."""
    cls.__onex_pipeline__ = guards  # type: ignore[attr-defined]
    if not guards:
        return
    raw = _raw_process(cls)
    if not inspect.iscoroutinefunction(raw):
        sync_raw = raw

        @functools.wraps(sync_raw)
        async def raw(self: Any, *args: Any, **kwargs: Any) -> Any:
            result = sync_raw(self, *args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            return result

    hooks = tuple(f"_guard_{name}" for name in guards)

    def chain_for(self: Any) -> Callable[..., Awaitable[Any]]:
        call: Callable[..., Awaitable[Any]] = raw.__get__(self)
        for hook in reversed(hooks):
            call = getattr(self, hook)(call)
        self._onex_chain = (raw, call)  # never via __dict__: see _nodes._initialize_mixins
        return call

    async def process(self: Any, *args: Any, **kwargs: Any) -> Any:
        inside = _inside.get()
        task = current_task()
        if inside is not None and inside[0] is self and inside[1] is task:
            return await raw(self, *args, **kwargs)  # super().process() inside the pipeline
        chain = self._onex_chain
        call = chain[1] if chain is not None and chain[0] is raw else chain_for(self)
        token = _inside.set((self, task))
        try:
            return await call(*args, **kwargs)
        finally:
            _inside.reset(token)

    functools.update_wrapper(process, raw)
    process.__onex_raw__ = raw  # type: ignore[attr-defined]
    process.__onex_guards__ = guards  # type: ignore[attr-defined]
    cls.process = process  # type: ignore[attr-defined]
