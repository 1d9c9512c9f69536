"""The ``self.service_registry`` facility: registration, heartbeats, discovery and watching."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Mapping
from typing import Any

from onex_compose import coerce_config
from onex_compose.capabilities._log import logger
from onex_compose.capabilities.service_registry._memory import MemoryBackend
from onex_compose.capabilities.service_registry._model import (
    RegistryChange,
    RegistryConflictError,
    RegistryError,
    RegistryInputError,
    RegistryUnavailableError,
    ServiceEntry,
    ServiceRegistryConfig,
    check_metadata,
    check_node_type,
)

__all__ = ["TOPIC", "ServiceRegistry", "Watch"]

TOPIC = "service_registry.changed"
"""The event bus topic changes are published on (with event_bus composed)."""

Callback = Callable[[RegistryChange], Any]


def _no_metric(*args: Any, **kwargs: Any) -> None:
    return None


class Watch:
    """A watcher registered by :meth:`ServiceRegistry.watch`.

    ``await watch`` waits until the Redis subscription is confirmed (at once on memory), so
    changes made by other processes after that are received; ``unwatch()`` stops delivery.
    """

    __slots__ = ("_registry", "active", "callback")

    def __init__(self, registry: ServiceRegistry, callback: Callback) -> None:
        self._registry = registry
        self.callback = callback
        self.active = True

    def __repr__(self) -> str:
        name = getattr(self.callback, "__qualname__", repr(self.callback))
        return f"<Watch {name} {'active' if self.active else 'stopped'}>"

    def unwatch(self) -> None:
        """Stop delivering changes to the callback (idempotent)."""
        if self.active:
            self.active = False
            self._registry._unwatch(self)

    def __await__(self) -> Generator[Any, None, Watch]:
        return self._registry._confirm(self).__await__()


class ServiceRegistry:
    """Service registration and discovery for one node (``node.service_registry``).

    An entry is **online** while ``now < expires_at`` (``last_heartbeat + ttl``) and it has not
    left; otherwise it is **offline**. Offline and left entries are kept until
    ``purge_after`` seconds past ``expires_at``, then ``sweep`` removes them (``purged``). A
    heartbeat after an entry went offline brings it back (``online``). Changes (``registered``,
    ``updated``, ``offline``, ``online``, ``left``, ``purged``) reach every watcher of the
    namespace, in order, and, with event_bus composed, the topic ``service_registry.changed``
    (published once, by the process that made the change).

    **Clock.** ``clock`` is a zero-argument callable returning seconds (default
    ``time.time``); tests inject one with ``node.service_registry.clock = ManualClock()``. It
    times the memory backend and the Redis backend with ``redis_clock: client``; with
    ``redis_clock: server`` (the default) the Redis scripts read the server's ``TIME``, one
    clock for every process. The heartbeat task itself sleeps in real time.

    **Tasks.** The heartbeat task (heartbeat, then sweep, every ``heartbeat_interval``) starts
    with ``start()`` or the first ``register()``; a delivery task starts with the first change
    for a watcher, and a pub/sub reader when a watcher is added on Redis. ``aclose()`` leaves
    (status ``left``) and stops all of them.

    **Outages.** When Redis cannot be reached, heartbeats fail (logged once per outage, counted
    as ``registry_heartbeats_total{outcome="error"}``), :meth:`health` says ``degraded``, and the
    node keeps serving; once Redis answers again the entry is re-registered by the heartbeat
    task. ``discover`` and ``get`` raise :class:`RegistryUnavailableError` (retriable).

    Example:
        >>> import asyncio
        >>> from capabilities._context import ManualClock
        >>> reg = ServiceRegistry({"namespace": "doc-registry", "ttl": 10},
        ...                       node_id="pricer-1", name="Pricer", node_type="COMPUTE",
        ...                       capabilities=("metrics", "caching"), clock=ManualClock())
        >>> async def demo():
        ...     await reg.register()
        ...     found = [e.name for e in await reg.discover(capability="caching")]
        ...     reg.clock.advance(10)
        ...     changes = await reg.sweep()
        ...     gone = await reg.discover(capability="caching")
        ...     kept = await reg.discover(include_offline=True)
        ...     await reg.aclose()
        ...     return found, [c.kind for c in changes], gone, [e.status for e in kept]
        >>> asyncio.run(demo())
        (['Pricer'], ['offline'], [], ['offline'])
    """

    def __init__(self, config: ServiceRegistryConfig | Mapping[str, Any] | None = None, *,
                 node_id: str | None = None, name: str | None = None,
                 node_type: Any = None, capabilities: tuple[str, ...] = (),
                 metrics: Any = None, event_bus: Any = None, registry: Any = None,
                 clock: Callable[[], float] | None = None, instance: str | None = None) -> None:
        cfg: ServiceRegistryConfig = coerce_config(ServiceRegistryConfig, config,
                                                   "service_registry")
        self.config = cfg
        self.clock: Callable[[], float] = clock or time.time
        self.node_id = node_id or f"node-{uuid.uuid4().hex[:8]}"
        self.name = cfg.name or name or self.node_id
        self.node_type = None if node_type is None else check_node_type(node_type)
        self.capabilities = tuple(capabilities)
        self.instance = instance or uuid.uuid4().hex
        self._iid_key: tuple[str, int] | None = None
        self._iid = ""
        self._registry = registry
        self._inc: Callable[..., Any] = getattr(metrics, "increment", None) or _no_metric
        self._gauge: Callable[..., Any] = getattr(metrics, "gauge", None) or _no_metric
        self._bus = event_bus if cfg.publish_changes else None
        self._redis = cfg.backend == "redis"
        if self._redis:
            from onex_compose.capabilities._redis import require_client
            from onex_compose.capabilities.service_registry._redis import RedisBackend

            require_client("service_registry")
            self.backend: Any = RedisBackend(cfg.redis_url, cfg.namespace,
                                             timeout=cfg.redis_timeout,
                                             server_clock=cfg.redis_clock == "server")
        else:
            self.backend = MemoryBackend(cfg.namespace)
        self._wanted = False          # register() was called (and no deregister since)
        self._registered = False      # the backend holds our entry as far as we know
        self.entry: ServiceEntry | None = None   # our entry as last written
        self._watches: list[Watch] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[RegistryChange] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._hb_task: asyncio.Task[None] | None = None
        self._listener: Any = None
        self._supervisor: asyncio.Task[None] | None = None
        self._outage: str | None = None
        self._listen_error: str | None = None
        self._counts = {"heartbeats": 0, "heartbeat_errors": 0, "changes": 0, "outages": 0,
                        "callback_errors": 0}

    def __repr__(self) -> str:
        state = "registered" if self._registered else "not registered"
        return (f"<ServiceRegistry {self.config.backend} namespace={self.config.namespace!r} "
                f"instance_id={self.instance_id!r} {state}>")

    @property
    def instance_id(self) -> str:
        """The fleet-unique registry key: the configured ``instance_id``, else
        ``<host>:<pid>:<node_id>`` (computed once per node id and process)."""
        if self.config.instance_id:
            return self.config.instance_id
        key = (self.node_id, os.getpid())
        if self._iid_key != key:
            self._iid_key = key
            self._iid = f"{socket.gethostname()}:{key[1]}:{key[0]}"
        return self._iid

    async def _watching(self) -> None:
        """On Redis with watchers: make sure the change channel is subscribed on this loop
        before an operation, so its own change reaches the watchers too (a watch added outside
        any event loop subscribes here)."""
        if not self._watches:
            return
        self._listen()
        try:
            await self._get_listener().ensure()
        except Exception as exc:  # the supervisor retries; health says so
            self._listening(exc)

    def _now(self) -> float | None:
        if self._redis and self.config.redis_clock == "server":
            return None
        return float(self.clock())

    # -- registration ------------------------------------------------------------------------

    def _template(self) -> ServiceEntry:
        cfg = self.config
        return ServiceEntry(
            node_id=self.node_id, instance_id=self.instance_id, instance=self.instance,
            name=self.name, node_type=self.node_type, capabilities=self.capabilities,
            address=cfg.address, metadata=dict(cfg.metadata), version=cfg.version,
            domain=cfg.domain, status="online", registered_at=0.0, last_heartbeat=0.0,
            expires_at=0.0)

    async def register(self, *, replace: bool = False) -> ServiceEntry:
        """Register this node (or refresh its entry) and start heartbeating.

        Args:
            replace: take the instance id over even while another online instance holds it.

        Returns:
            The entry as written (status ``online``).

        Raises:
            RegistryConflictError: another online instance holds the instance id.
            RegistryUnavailableError: Redis cannot be reached (the heartbeat task retries).
        """
        self._wanted = True
        self._ensure_heartbeats()
        if self._redis:
            await self._watching()
        try:
            change = await self.backend.register(self._template(), replace_=replace,
                                                 now=self._now(), ttl=self.config.ttl)
        except RegistryUnavailableError as exc:
            self._down(exc)
            raise
        except RegistryConflictError:
            self._wanted = False
            raise
        self._up()
        self._registered = True
        self.entry = change.entry
        await self._made([change])
        return change.entry

    async def heartbeat(self) -> ServiceEntry:
        """Renew this node's entry (``expires_at = now + ttl``).

        An entry that went offline comes back (an ``online`` change); an entry the backend lost
        (Redis restarted, or purged) is registered again.

        Raises:
            RegistryError: the node is not registered (call :meth:`register` first).
            RegistryConflictError: another instance took the instance id over
                (``register(replace=True)``); heartbeats stop.
            RegistryUnavailableError: Redis cannot be reached (logged once per outage; health
                is degraded until a heartbeat succeeds).
        """
        if not self._wanted:
            raise RegistryError(
                f"service registry: {self.instance_id!r} is not registered; call register() "
                "first (or compose with auto_register: true and start() the node)")
        if not self._registered:
            return await self._reregister()
        if self._redis:
            await self._watching()
        try:
            kind, data = await self.backend.heartbeat(self.instance_id, self.instance,
                                                      now=self._now(), ttl=self.config.ttl)
        except RegistryUnavailableError as exc:
            self._beat("error")
            self._down(exc)
            raise
        self._up()
        if kind == "conflict":
            self._beat("conflict")
            self._wanted = self._registered = False
            raise RegistryConflictError(
                f"service registry: instance id {self.instance_id!r} was taken over by another "
                f"instance ({str(data)[:8]}...); this node stopped heartbeating. Configure a "
                "distinct instance_id, or register(replace=True) to take it back")
        if kind in ("missing", "left"):
            return await self._reregister()
        self._beat("ok")
        assert self.entry is not None
        if kind == "online":
            self.entry = data
            await self._made([RegistryChange("online", data)])
        elif data.__class__ is tuple:      # Redis: (last_heartbeat, expires_at)
            self.entry = self.entry._renewed(*data)
        else:
            self.entry = data
        return self.entry

    async def _reregister(self) -> ServiceEntry:
        try:
            entry = await self.register()
        except RegistryUnavailableError:
            self._beat("error")
            raise
        self._beat("reregistered")
        logger.info("service_registry[{}]: {} registered again", self.config.namespace,
                    self.instance_id)
        return entry

    async def deregister(self) -> None:
        """Leave: the entry's status becomes ``left`` (kept until ``purge_after``) and the
        heartbeats stop. Idempotent."""
        self._wanted = False
        task, self._hb_task = self._hb_task, None
        if task is not None and task is not asyncio.current_task():
            await _cancel(task)
        if not self._registered:
            return
        if self._redis:
            await self._watching()
        try:
            change = await self.backend.deregister(self.instance_id, self.instance,
                                                   now=self._now())
        except RegistryUnavailableError as exc:
            self._down(exc)
            raise
        self._registered = False
        if change is not None:
            self.entry = change.entry
            await self._made([change])

    # -- queries ------------------------------------------------------------------------------

    def _expand(self, capability: str) -> list[str]:
        registry = self._registry
        if registry is None:
            from onex_compose._registry import default_registry as registry
        names, unknown = registry.expand([capability])
        return names if names and not unknown else [capability]

    async def discover(self, capability: str | None = None, node_type: Any = None,
                       name: str | None = None, domain: str | None = None,
                       metadata: Mapping[str, str] | None = None,
                       include_offline: bool = False) -> list[ServiceEntry]:
        """Entries matching every given filter, sorted by instance id; online ones only unless
        ``include_offline`` (then offline and left ones too).

        Args:
            capability: a capability, alias or bundle (``"fault_tolerance"``: entries with both
                retry and circuit_breaker).
            node_type: an :class:`EnumNodeType` or its name, case-insensitive.
            name, domain: exact matches.
            metadata: a subset every match carries (string -> string).
            include_offline: also return offline and left entries.

        Raises:
            RegistryInputError: an unknown node type or non-string metadata.
            RegistryUnavailableError: Redis cannot be reached.
        """
        want_type = None if node_type is None else check_node_type(node_type)
        want_meta = None if metadata is None else check_metadata(metadata, "metadata filter")
        caps = None if capability is None else self._expand(capability)
        try:
            entries, now = await self.backend.query(caps, self._now())
        except RegistryUnavailableError as exc:
            self._down(exc)
            raise
        out = []
        for entry in entries:
            entry = entry.at(now)
            if not include_offline and entry.status != "online":
                continue
            if want_type is not None and entry.node_type != want_type:
                continue
            if name is not None and entry.name != name:
                continue
            if domain is not None and entry.domain != domain:
                continue
            if want_meta and any(entry.metadata.get(k) != v for k, v in want_meta.items()):
                continue
            out.append(entry)
        out.sort(key=lambda e: e.instance_id)
        return out

    async def get(self, node_id: str) -> ServiceEntry:
        """The entry of an instance id, or of a node id that exactly one online entry has.

        Raises:
            RegistryInputError: no entry has that id, or several online entries have that node
                id (the message lists their instance ids).
            RegistryUnavailableError: Redis cannot be reached.
        """
        try:
            entry, now = await self.backend.get(node_id, self._now())
            if entry is not None:
                return entry.at(now)
            entries, now = await self.backend.query(None, self._now())
        except RegistryUnavailableError as exc:
            self._down(exc)
            raise
        matches = [e.at(now) for e in entries if e.node_id == node_id]
        online = [e for e in matches if e.status == "online"]
        if len(online) == 1:
            return online[0]
        if not online:
            known = f" (offline or left: {', '.join(e.instance_id for e in matches)})" \
                if matches else ""
            raise RegistryInputError(
                f"no online entry has instance id or node id {node_id!r}{known}; "
                "discover(include_offline=True) lists every entry")
        raise RegistryInputError(
            f"{len(online)} online entries have node id {node_id!r}: "
            f"{', '.join(e.instance_id for e in online)}; get() one of these instance ids")

    async def sweep(self) -> list[RegistryChange]:
        """Flip expired entries to offline and remove those past ``purge_after``; returns the
        changes this call made (exactly one ``offline`` per expiry, however many sweep). Also
        sets the ``registry_entries{status}`` gauge. Run by the heartbeat task too."""
        if self._redis:
            await self._watching()
        changes: list[RegistryChange]
        try:
            changes, counts = await self.backend.sweep(now=self._now(),
                                                       purge_after=self.config.purge_after)
        except RegistryUnavailableError as exc:
            self._down(exc)
            raise
        self._up()
        for status, n in counts.items():
            self._gauge("registry_entries", n, {"status": status})
        own = [c for c in changes if c.entry.instance_id == self.instance_id
               and c.entry.instance == self.instance]
        for change in own:
            if change.kind == "purged":
                self._registered = False
            elif self.entry is not None:
                self.entry = change.entry
        await self._made(changes)
        return changes

    # -- watching -----------------------------------------------------------------------------

    def watch(self, callback: Callback) -> Watch:
        """Call ``callback(change)`` (sync or async) for every change in the namespace, in order.

        Returns a :class:`Watch`; ``await`` it to wait until the Redis subscription is
        confirmed. A callback that raises is logged and counted; the others still run.

        Raises:
            RegistryInputError: ``callback`` is not callable.
        """
        if not callable(callback):
            raise RegistryInputError(f"watch() needs a callable, got {callback!r}")
        w = Watch(self, callback)
        self._watches.append(w)
        if self._redis:
            listener = self._get_listener()
            listener.add(channels=[self.backend.channel])
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                pass  # start(), awaiting the watch, or the next operation connects
            else:
                self._listen()
        else:
            self.backend.listen(self)
        return w

    async def changes(self) -> AsyncIterator[RegistryChange]:
        """Iterate over changes as they happen (``async for change in reg.changes()``); the
        watch starts at the first iteration and stops when the loop is left."""
        queue: asyncio.Queue[RegistryChange] = asyncio.Queue()
        w = self.watch(queue.put_nowait)
        try:
            await w
            while True:
                yield await queue.get()
        finally:
            w.unwatch()

    def _unwatch(self, w: Watch) -> None:
        if w in self._watches:
            self._watches.remove(w)
        if not self._watches and not self._redis:
            self.backend.unlisten(self)

    async def _confirm(self, w: Watch) -> Watch:
        if self._redis and w.active:
            self._listen()
            await self._get_listener().ensure()
        return w

    def _deliver(self, change: RegistryChange) -> None:
        """Queue a change for this facility's watchers (called on the event loop)."""
        if not self._watches:
            return
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._queue is None:
            self._loop, self._queue = loop, asyncio.Queue()
            self._worker = None
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._dispatch(self._queue),
                                            name=f"onex-registry-{self.config.namespace}")
        self._queue.put_nowait(change)

    async def _dispatch(self, queue: asyncio.Queue[RegistryChange]) -> None:
        while True:
            change = await queue.get()
            try:
                for w in list(self._watches):
                    if not w.active:
                        continue
                    try:
                        result = w.callback(change)
                        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                            await result
                    except Exception as exc:
                        self._counts["callback_errors"] += 1
                        logger.opt(exception=exc).error(
                            "service_registry[{}]: watch callback {} failed on {!r}: {!r}",
                            self.config.namespace,
                            getattr(w.callback, "__qualname__", w.callback), change, exc)
            finally:
                queue.task_done()

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until every change queued for the watchers has been handled (``False`` if
        ``timeout`` seconds passed first)."""
        queue = self._queue
        if queue is None or self._loop is not asyncio.get_running_loop():
            return True
        try:
            await asyncio.wait_for(queue.join(), timeout)
        except TimeoutError:
            return False
        return True

    def _get_listener(self) -> Any:
        if self._listener is None:
            from onex_compose.capabilities._redis import PubSubListener

            self._listener = PubSubListener(
                self.config.redis_url, self._on_message, timeout=self.config.redis_timeout,
                name=f"service_registry[{self.config.namespace}]")
        return self._listener

    def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        sup = self._supervisor
        if sup is not None and sup.get_loop() is loop and not sup.done():
            return
        self._supervisor = loop.create_task(
            self._get_listener().supervise(1.0, self._listening, max_interval=10.0),
            name=f"onex-registry-listener-{self.config.namespace}")

    def _listening(self, exc: BaseException | None) -> None:
        if exc is None:
            self._listen_error = None
        else:
            if self._listen_error is None:
                logger.warning("service_registry[{}]: not receiving changes from Redis: {!r}",
                               self.config.namespace, exc)
            self._listen_error = f"{type(exc).__name__}: {exc}"

    def _on_message(self, channel: str, pattern: str | None, data: bytes) -> None:
        from onex_compose.capabilities.service_registry._redis import decode_change

        self._deliver(decode_change(data))

    # -- bookkeeping --------------------------------------------------------------------------

    async def _made(self, changes: list[RegistryChange]) -> None:
        """Changes this facility made: count them and publish them on the event bus."""
        for change in changes:
            self._counts["changes"] += 1
            self._inc("registry_changes_total", 1, {"kind": change.kind})
            if self._bus is not None:
                try:
                    await self._bus.publish(TOPIC, change.as_event())
                except Exception as exc:
                    logger.warning("service_registry[{}]: could not publish {!r} on the event "
                                   "bus: {!r}", self.config.namespace, change, exc)

    def _beat(self, outcome: str) -> None:
        self._counts["heartbeats"] += 1
        if outcome == "error":
            self._counts["heartbeat_errors"] += 1
        self._inc("registry_heartbeats_total", 1, {"outcome": outcome})

    def _down(self, exc: BaseException) -> None:
        if self._outage is None:
            self._counts["outages"] += 1
            logger.warning("service_registry[{}] {}: Redis is unreachable ({}); the node "
                           "keeps serving and re-registers when it returns",
                           self.config.namespace, self.instance_id, exc.__cause__ or exc)
        self._outage = f"{type(exc).__name__}: {exc}"
        if self._listener is not None:
            self._listener.suspect()

    def _up(self) -> None:
        if self._outage is not None:
            logger.info("service_registry[{}] {}: Redis reachable again",
                        self.config.namespace, self.instance_id)
            self._outage = None

    def stats(self) -> dict[str, Any]:
        """Counts: heartbeats, heartbeat_errors, changes (made here), outages,
        callback_errors, and the number of watchers."""
        return {**self._counts, "watchers": len(self._watches)}

    def health(self) -> dict[str, Any]:
        """``healthy``, or ``degraded`` while Redis cannot be reached (the node keeps serving).

        Example:
            >>> ServiceRegistry({"namespace": "doc-health"}).health()["status"]
            'healthy'
        """
        report: dict[str, Any] = {"status": "healthy", "backend": self.config.backend,
                                  "instance_id": self.instance_id,
                                  "registered": self._registered, **self.stats()}
        problems = []
        if self._outage is not None:
            problems.append(f"Redis unreachable: {self._outage}")
        if self._listen_error is not None and self._watches:
            problems.append(f"not receiving changes: {self._listen_error}")
        if problems:
            report["status"] = "degraded"
            report["reason"] = "; ".join(problems)
        return report

    # -- lifecycle ----------------------------------------------------------------------------

    def _ensure_heartbeats(self) -> None:
        loop = asyncio.get_running_loop()
        task = self._hb_task
        if task is not None and task.get_loop() is loop and not task.done():
            return
        self._hb_task = loop.create_task(self._heartbeats(),
                                         name=f"onex-registry-heartbeat-{self.node_id}")

    async def _heartbeats(self) -> None:
        interval = self.config.interval
        me = asyncio.current_task()
        while self._hb_task is me:   # deregister()/aclose() clear it (and cancel this task)
            await asyncio.sleep(interval)
            if self._wanted:
                try:
                    await self.heartbeat()
                except RegistryUnavailableError:
                    pass  # logged once per outage, counted, shown in health
                except RegistryConflictError as exc:
                    logger.error("{}", exc)
                except Exception as exc:
                    logger.opt(exception=exc).error(
                        "service_registry[{}]: heartbeat failed: {!r}", self.config.namespace,
                        exc)
            try:
                await self.sweep()
            except RegistryUnavailableError:
                pass
            except Exception as exc:
                logger.opt(exception=exc).error("service_registry[{}]: sweep failed: {!r}",
                                                self.config.namespace, exc)

    async def start(self) -> None:
        """Register (with ``auto_register``) and start the heartbeat task. An unreachable Redis
        does not fail the start: the heartbeat task registers once it answers."""
        if self._redis and self._watches:
            self._listen()
        if not self.config.auto_register:
            return
        try:
            await self.register()
        except RegistryUnavailableError:
            self._wanted = True
            self._ensure_heartbeats()

    async def aclose(self) -> None:
        """Leave (status ``left``) if registered, deliver queued changes (up to 5 s), and stop
        every task this facility started (idempotent)."""
        try:
            await self.deregister()
        except RegistryUnavailableError:
            pass  # the entry goes offline by itself after ttl
        # stop receiving first (a late message would start a new delivery task), then let
        # the queued changes reach the watchers, then stop the delivery task
        sup, self._supervisor = self._supervisor, None
        if sup is not None:
            await _cancel(sup)
        if self._listener is not None:
            await self._listener.aclose()
        if self._queue is not None and self._loop is _running():
            await self.drain(5.0)
        tasks = [t for t in (self._worker, self._hb_task) if t is not None]
        self._worker = self._hb_task = None
        self._queue = None
        for task in tasks:
            await _cancel(task)
        if not self._redis:
            self.backend.unlisten(self)


def _running() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def _cancel(task: asyncio.Task[Any]) -> None:
    """Cancel a task and wait until it is done. The cancellation is repeated: redis-py can
    swallow a ``CancelledError`` that arrives while it connects or disconnects."""
    if task.done():
        return
    if task.get_loop() is not _running():
        task.cancel()
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
    if not task.cancelled() and task.exception() is not None:
        logger.debug("a service_registry task ended with {!r}", task.exception())
