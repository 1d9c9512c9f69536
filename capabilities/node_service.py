"""node_service: long-running service mode (seed 000's ``MixinNodeService``).

``start()`` (the node's) returns as soon as resources are open; ``serve()`` is the blocking
service loop: it starts the node, installs SIGTERM/SIGINT handlers, and waits until
``stop()`` is called or a signal arrives. ``stop()`` then refuses new ``process()`` calls, lets
in-flight ones finish within ``shutdown_timeout`` (cancelling the stragglers), runs the shutdown
callbacks (newest first, each isolated), and closes the node. Stop before start is a no-op;
repeated stops and repeated signals are safe: a ``stop()`` that finds a shutdown under way waits
for it to finish, ``serve()`` returns only once the shutdown is complete, and its signal handlers
stay installed until then (a second SIGTERM during the drain is counted and ignored, never the
default action that would kill the process mid-drain). Closing the node directly (``aclose()``,
``async with``) also ends service mode: ``serve()`` wakes up and the shutdown callbacks run.

In-flight tracking is the ``process()`` guard with the outermost rank, so every call through
the node's pipeline is counted without the user doing anything.

asyncio objects (the shutdown event, the idle event) are created lazily on the running loop, so
a node built outside a loop works across repeated ``asyncio.run()`` calls.
"""

from __future__ import annotations

import asyncio
import inspect
import signal
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from onex_compose import ConfigurationError, OnexError, coerce_config, facility
from onex_compose.capabilities._log import logger

__all__ = [
    "MixinNodeService",
    "NodeServiceConfig",
    "NodeServiceProtocol",
    "ServiceRuntime",
    "ServiceStoppingError",
]


class ServiceStoppingError(OnexError, RuntimeError):
    """A call arrived while the service is shutting down (not retriable on this node)."""

    onex_retriable = False


class NodeServiceConfig(BaseModel):
    """Configuration of the node_service capability."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shutdown_timeout: float = Field(default=30.0, ge=0.0, le=3600.0,
                                    description="seconds in-flight work gets to finish on stop")
    handle_signals: bool = Field(default=True, description="install SIGTERM/SIGINT handlers in serve()")
    ops_host: str = Field(default="127.0.0.1", min_length=1,
                          description="address the operations endpoint listens on (0.0.0.0 in "
                                      "a container, so the kubelet and Prometheus reach it)")
    ops_port: int | None = Field(default=None, ge=0, le=65535,
                                 description="port of the operations endpoint (/metrics, /livez, "
                                             "/readyz, /startupz) served by serve(); None: off; "
                                             "0: a free port, logged and in service.ops_url")
    ops_server: Literal["auto", "uvicorn", "stdlib"] = Field(
        default="auto", description="uvicorn (the [ops] extra) when installed, else the stdlib "
                                    "asyncio server; or force one")


class NodeServiceProtocol(Protocol):
    """What node_service adds to a node."""

    async def serve(self) -> None: ...
    async def stop(self, timeout: float | None = None) -> None: ...
    def add_shutdown_callback(self, callback: Callable[[], Any]) -> None: ...


class ServiceRuntime:
    """Per-node service state: running flag, in-flight count, shutdown event, callbacks."""

    def __init__(self, config: NodeServiceConfig) -> None:
        self.config = config
        self.running = False
        self.stopping = False
        self.in_flight = 0
        self.callbacks: list[Callable[[], Any]] = []
        self.stopped = False  # set when a stop() (or a direct close) has completed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._shutdown: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._done: asyncio.Event | None = None
        # tasks running a process() call (cancelled when they outlast the shutdown timeout);
        # never the stop task itself, which must survive to run the callbacks and close
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stop_tasks: set[asyncio.Task[Any]] = set()
        # in-flight calls a stop() does not wait for: its own, when process() itself calls stop()
        self._drain_floor = 0
        self.signals_received = 0
        self.ops: Any = None  # the OpsServer serve() runs while ops_port is set
        self.ops_url: str | None = None  # its URL (http://host:port) while it listens

    def _events(self) -> tuple[asyncio.Event, asyncio.Event]:
        loop = asyncio.get_running_loop()
        if (self._loop is not loop or self._shutdown is None or self._idle is None
                or self._done is None):
            self._loop = loop
            self._shutdown = asyncio.Event()
            self._idle = asyncio.Event()
            self._done = asyncio.Event()
            if self.in_flight == 0:
                self._idle.set()
            if self.stopping:
                self._shutdown.set()
            if self.stopped:
                self._done.set()
        return self._shutdown, self._idle

    def _done_event(self) -> asyncio.Event:
        self._events()
        assert self._done is not None
        return self._done

    def _sync_exit(self) -> None:
        """A sync ``process()`` call ended (in any thread): wake a ``stop()`` waiting to drain.

        The idle event belongs to the loop ``stop()`` runs on; from another thread it is set
        through that loop (``call_soon_threadsafe``), never directly.
        """
        self.in_flight -= 1
        loop, idle = self._loop, self._idle
        if loop is None or idle is None or self.in_flight > self._drain_floor:
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            idle.set()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(self._set_idle_if_drained)

    def _set_idle_if_drained(self) -> None:
        if self._idle is not None and self.in_flight <= self._drain_floor:
            self._idle.set()

    @property
    def shutdown_event(self) -> asyncio.Event:
        """Set when shutdown begins (wakes anything waiting on it, e.g. a health loop)."""
        return self._events()[0]

    def __repr__(self) -> str:
        state = "stopping" if self.stopping else "running" if self.running else "idle"
        ops = f" ops={self.ops_url}" if self.ops_url else ""
        return f"<ServiceRuntime {state} in_flight={self.in_flight}{ops}>"


class MixinNodeService:
    """Long-running service mode with graceful shutdown.

    Example:
        >>> import asyncio
        >>> from onex_compose import NodeComputeService
        >>> class Doubler(NodeComputeService):
        ...     async def process(self, x):
        ...         return 2 * x
        >>> async def main():
        ...     node = Doubler()
        ...     await node.start()
        ...     result = await node.process(21)
        ...     await node.stop()
        ...     return result
        >>> asyncio.run(main())
        42
    """

    __onex_capability__ = "node_service"
    __slots__ = ()

    def setup_node_service(self, config: NodeServiceConfig | Mapping[str, Any] | None = None) -> None:
        """Configure service mode (``shutdown_timeout``, ``handle_signals``).

        Calling it again reconfigures the node's one runtime in place: a running service stays
        running, its in-flight calls stay counted (the ``process()`` guard holds the runtime)
        and its shutdown callbacks are kept.
        """
        cfg = coerce_config(NodeServiceConfig, config, "node_service")
        old = getattr(self, "service", None)
        if isinstance(old, ServiceRuntime):
            old.config = cfg
            return
        self.service = ServiceRuntime(cfg)

    @facility
    def service(self) -> ServiceRuntime:
        """The service runtime (built with defaults if setup never ran)."""
        return ServiceRuntime(NodeServiceConfig())

    async def start_node_service(self) -> None:
        """Mark the service running (called by the node's ``start()``)."""
        rt = self.service
        rt.running = True
        rt.stopping = False
        rt.stopped = False
        shutdown, _ = rt._events()
        shutdown.clear()
        rt._done_event().clear()

    async def close_node_service(self) -> None:
        """End service mode when the node is closed directly (``aclose()``, ``async with``).

        Inside ``stop()`` this does nothing (``stop()`` drains and runs the callbacks itself);
        otherwise it wakes ``serve()`` and runs the shutdown callbacks.
        """
        rt = self.service
        if rt.stopping or not rt.running:
            return
        try:
            rt._events()[0].set()
            await self._run_shutdown_callbacks()
        finally:
            rt.running = False
            rt.stopped = True
            rt._done_event().set()

    def add_shutdown_callback(self, callback: Callable[[], Any]) -> None:
        """Run ``callback`` (sync or async) when the service stops; newest first."""
        if not callable(callback):
            raise TypeError(f"add_shutdown_callback() takes a callable, got {callback!r}")
        self.service.callbacks.append(callback)

    async def serve(self) -> None:
        """Start the node and block until ``stop()`` or SIGTERM/SIGINT, then shut down.

        With ``ops_port`` set, the operations endpoint (``self.ops_app()``: ``/metrics``,
        ``/livez``, ``/readyz``, ``/startupz``) listens first, so probes answer while
        ``start()`` runs (startup and readiness 503 until it is done) and through the drain
        (readiness 503); it stops last, within ``shutdown_timeout``.

        Raises:
            OpsServerError: the operations endpoint cannot listen (address in use...).
        """
        rt = self.service
        loop = asyncio.get_running_loop()
        if rt.config.ops_port is not None and rt.ops is None:
            await self._start_ops()
        try:
            await self.start()  # type: ignore[attr-defined]
        except BaseException:
            await self._stop_ops(rt.config.shutdown_timeout)
            raise
        installed: list[int] = []
        if rt.config.handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(sig, self._on_signal, sig)
                    installed.append(sig)
                except (NotImplementedError, RuntimeError, ValueError):
                    logger.debug("node_service: cannot handle {} here", sig)
        try:
            shutdown, _ = rt._events()
            await shutdown.wait()
        finally:
            deadline = loop.time() + rt.config.shutdown_timeout
            try:
                # waits for a shutdown already under way (a signal, another task's stop());
                # the handlers stay installed until it is complete, so a repeated signal
                # during the drain is ignored instead of killing the process
                await self.stop()
            finally:
                try:
                    await self._stop_ops(deadline - loop.time())
                finally:
                    for sig in installed:
                        loop.remove_signal_handler(sig)

    async def _start_ops(self) -> None:
        from onex_compose._ops import OpsServer

        rt = self.service
        cfg = rt.config
        server = OpsServer(self.ops_app(), host=cfg.ops_host,  # type: ignore[attr-defined]
                           port=cfg.ops_port or 0, server=cfg.ops_server)
        rt.ops_url = await server.start()
        rt.ops = server
        logger.info("node_service: operations endpoint of {} listening on {} ({}; /metrics "
                    "/livez /readyz /startupz)", getattr(self, "node_id", "?"), rt.ops_url,
                    server.kind)

    async def _stop_ops(self, budget: float) -> None:
        rt = self.service
        server, rt.ops = rt.ops, None
        if server is None:
            return
        try:
            await server.stop(max(budget, 0.1))
        finally:
            rt.ops_url = None

    def _on_signal(self, sig: int) -> None:
        rt = self.service
        rt.signals_received += 1
        logger.info("node_service: received signal {}, shutting down", sig)
        if rt.stopping:
            logger.info("node_service: shutdown already under way; signal {} ignored", sig)
            return
        task = asyncio.get_running_loop().create_task(self.stop())
        rt._stop_tasks.add(task)  # keep a reference until it is done
        task.add_done_callback(rt._stop_tasks.discard)

    async def stop(self, timeout: float | None = None) -> None:
        """Shut down gracefully: refuse new calls, drain in-flight ones, run callbacks, close.

        Safe to call repeatedly and concurrently: a call that finds a shutdown under way waits
        for it to complete; a call before ``start()`` does nothing.

        Args:
            timeout: seconds in-flight calls get (default: ``shutdown_timeout``).

        Raises:
            ConfigurationError: ``timeout`` is not a non-negative number.
        """
        if timeout is not None and (isinstance(timeout, bool)
                                    or not isinstance(timeout, int | float) or not timeout >= 0):
            raise ConfigurationError(
                f"stop(timeout=...) takes a non-negative number of seconds, got {timeout!r}.",
                capability="node_service")
        rt = self.service
        if rt.stopping:
            done = rt._done_event()
            if not done.is_set():
                await done.wait()
            return
        if not rt.running:
            return
        rt.stopping = True
        shutdown, idle = rt._events()
        done = rt._done_event()
        shutdown.set()
        limit = rt.config.shutdown_timeout if timeout is None else timeout
        current = asyncio.current_task()
        # a stop() called from inside process() (a "shutdown" command) does not wait for itself
        rt._drain_floor = 1 if current is not None and current in rt._tasks else 0
        try:
            if rt.in_flight > rt._drain_floor:
                idle.clear()
                try:
                    async with asyncio.timeout(limit):
                        await idle.wait()
                except TimeoutError:
                    logger.warning("node_service: {} call(s) still running after {}s; cancelling",
                                   rt.in_flight, limit)
                    for task in list(rt._tasks):
                        if task is not current:
                            task.cancel()
            await self._run_shutdown_callbacks()
            await self.aclose()  # type: ignore[attr-defined]
        finally:
            rt._drain_floor = 0
            rt.running = False
            rt.stopped = True
            done.set()

    async def _run_shutdown_callbacks(self) -> None:
        for callback in reversed(self.service.callbacks):
            try:
                result = callback()
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                logger.opt(exception=exc).warning("node_service: shutdown callback failed: {}", exc)

    def _guard_node_service(self, call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        rt = self.service

        async def tracked(*args: Any, **kwargs: Any) -> Any:
            if rt.stopping:
                raise ServiceStoppingError(
                    f"{type(self).__qualname__} is shutting down; the call was refused")
            _shutdown, idle = rt._events()
            rt.in_flight += 1
            idle.clear()
            task = asyncio.current_task()
            if task is not None:
                rt._tasks.add(task)
            try:
                return await call(*args, **kwargs)
            finally:
                rt.in_flight -= 1
                if task is not None:
                    rt._tasks.discard(task)
                if rt.in_flight <= rt._drain_floor:
                    idle.set()

        return tracked

    def _guard_sync_node_service(self, call: Callable[..., Any]) -> Callable[..., Any]:
        """The sync twin of the in-flight guard, for a plain ``def process``.

        Refuses calls once the service is stopping and counts the call in flight, so that
        ``stop()`` waits for it (from any thread). A sync call cannot be cancelled: one still
        running when ``shutdown_timeout`` ends keeps running while the node closes.
        """
        rt = self.service
        node = type(self).__qualname__

        def tracked_sync(*args: Any, **kwargs: Any) -> Any:
            if rt.stopping:
                raise ServiceStoppingError(f"{node} is shutting down; the call was refused")
            rt.in_flight += 1
            try:
                return call(*args, **kwargs)
            finally:
                rt._sync_exit()

        return tracked_sync
