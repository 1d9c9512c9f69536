"""The guarded ``process()`` pipeline: guard capabilities wrapping the node's operation.

A capability that guards an operation (retry, circuit breaker, rate limit, timeout, bulkhead,
caching, metrics, ...) defines ``_guard_<name>(self, call)`` returning an async callable that
wraps ``call``, and declares a ``guard_rank`` in its contract. A guard that can also guard a
plain ``def process`` defines ``_guard_sync_<name>(self, call)``, wrapping a sync callable with
the same semantics through the capability's sync path (retry's ``run_sync``, the thread
bulkhead, ...) and honouring the same switches (``guard_process: false`` returns ``call``).
For each class the engine:

* orders the guards by ``(guard_rank, name)``, outermost first: the order resilience4j and Polly
  use (observability and caching outermost, then retry, circuit breaker, rate limiter,
  per-attempt timeout, bulkhead innermost; see ``reference/capabilities.md`` A.7), whatever
  order the capabilities were listed or inherited in; ranks can be overridden per capability;
* wraps the *most-derived* ``process()`` exactly once: a subclass that overrides ``process()``
  keeps its guards, and one that calls ``super().process()`` does not run them twice (a context
  variable marks "already inside this node's pipeline, in this task", so the inner call goes
  straight to the parent's own body, while a task started inside ``process()`` is guarded);
* binds the chain once per instance, on the first call (``self._onex_chain``), so a call costs
  one context-variable set/reset plus the guards themselves;
* keeps the kind of ``process``: an ``async def`` is guarded by the ``_guard_*`` hooks, a plain
  ``def`` by the ``_guard_sync_*`` hooks and stays sync (a guard without a sync path is a
  :class:`~onex_compose.exceptions.CompositionError` naming it). A ``def process`` that returns
  a coroutine is refused when it does (a ``CompositionError`` saying to write ``async def``):
  its sync guards would have wrapped the call but none of the work.

The order is shown by :func:`onex_compose.explain` (``pipeline``, with ``pipeline_kind``) and
stored on the class as ``__onex_pipeline__`` (and ``__onex_pipeline_kind__``: ``"sync"``,
``"async"`` or ``None`` without guards).
"""

from __future__ import annotations

import functools
import inspect
from asyncio import current_task
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from threading import get_ident
from types import CoroutineType
from typing import Any

from onex_compose.exceptions import CompositionError

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
    """Wrap the most-derived ``process()`` of ``cls`` with its guard pipeline (once per class).

    An ``async def process`` is wrapped with the ``_guard_<name>`` hooks and stays a coroutine
    function; a plain ``def process`` is wrapped with the ``_guard_sync_<name>`` hooks and stays
    a plain function (``node.process(x)`` returns the value, no event loop needed).

    Raises:
        CompositionError: ``process`` is a plain ``def`` and a guard capability has no sync
            path (no ``_guard_sync_<name>``); the message names each such guard.
    """
    cls.__onex_pipeline__ = guards  # type: ignore[attr-defined]
    if not guards:
        cls.__onex_pipeline_kind__ = None  # type: ignore[attr-defined]
        return
    raw = _raw_process(cls)
    if inspect.iscoroutinefunction(raw):
        cls.__onex_pipeline_kind__ = "async"  # type: ignore[attr-defined]
        _install_async(cls, raw, guards)
    else:
        _check_sync_guards(cls, guards)
        cls.__onex_pipeline_kind__ = "sync"  # type: ignore[attr-defined]
        _install_sync(cls, raw, guards)


def _check_sync_guards(cls: type, guards: tuple[str, ...]) -> None:
    missing = [g for g in guards if not callable(getattr(cls, f"_guard_sync_{g}", None))]
    if missing:
        listed = ", ".join(repr(g) for g in missing)
        raise CompositionError(
            f"{cls.__qualname__} defines a sync `def process`, but guard "
            f"capabilit{'ies' if len(missing) > 1 else 'y'} {listed} "
            f"{'have' if len(missing) > 1 else 'has'} no sync path (no "
            f"{', '.join(f'_guard_sync_{g}' for g in missing)}), so "
            f"{'they' if len(missing) > 1 else 'it'} cannot guard it. Make process "
            f"`async def process(...)`, or drop {listed} from the class.")


def _install_async(cls: type, raw: Callable[..., Any], guards: tuple[str, ...]) -> None:
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

    _publish(cls, process, raw, guards)


def _install_sync(cls: type, raw: Callable[..., Any], guards: tuple[str, ...]) -> None:
    """The sync pipeline. The "inside this node's pipeline" mark is set by the innermost link,
    in the thread that runs the body (a sync guard may run the call in a worker thread, e.g.
    the timeout's executor), and keyed to that thread: ``super().process()`` in the body goes
    straight to the parent's body, while a thread started by the body is guarded."""
    hooks = tuple(f"_guard_sync_{name}" for name in guards)

    def chain_for(self: Any) -> Callable[..., Any]:
        def body(*args: Any, **kwargs: Any) -> Any:
            token = _inside.set((self, get_ident()))
            try:
                result = raw(self, *args, **kwargs)
            finally:
                _inside.reset(token)
            if type(result) is CoroutineType:  # the guards would wrap only the call, not the work
                _refuse_coroutine(cls, result)
            return result

        call: Callable[..., Any] = body
        for hook in reversed(hooks):
            call = getattr(self, hook)(call)
        self._onex_chain = (raw, call)  # never via __dict__: see _nodes._initialize_mixins
        return call

    def process(self: Any, *args: Any, **kwargs: Any) -> Any:
        inside = _inside.get()
        if inside is not None and inside[0] is self and inside[1] == get_ident():
            return raw(self, *args, **kwargs)  # super().process() inside the pipeline
        chain = self._onex_chain
        call = chain[1] if chain is not None and chain[0] is raw else chain_for(self)
        return call(*args, **kwargs)

    _publish(cls, process, raw, guards)


def _refuse_coroutine(cls: type, result: CoroutineType[Any, Any, Any]) -> None:
    result.close()  # never awaited: close it rather than leave a warning behind
    raise CompositionError(
        f"{cls.__qualname__}.process is a plain `def` that returned a coroutine, so its sync "
        "guards wrapped only the call and none of the work. Write it as "
        "`async def process(...)` (and await the coroutine inside) to be guarded as async.")


def _publish(cls: type, process: Callable[..., Any], raw: Callable[..., Any],
             guards: tuple[str, ...]) -> None:
    functools.update_wrapper(process, raw)
    process.__onex_raw__ = raw  # type: ignore[attr-defined]
    process.__onex_guards__ = guards  # type: ignore[attr-defined]
    cls.process = process  # type: ignore[attr-defined]
