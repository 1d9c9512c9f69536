"""The Notifier: routing, deduplication, rate limits, quiet hours, digests and escalation."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import time
import uuid
import zoneinfo
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from onex_compose import ConfigurationError, coerce_config
from onex_compose.capabilities._log import logger
from onex_compose.capabilities.notification._model import (
    CallbackChannel,
    EmailChannel,
    EventBusChannel,
    LogChannel,
    Notification,
    NotificationConfig,
    NotificationDeliveryError,
    NotificationError,
    NotificationResult,
    WebhookChannel,
    severity_rank,
)
from onex_compose.exceptions import did_you_mean

if TYPE_CHECKING:
    from onex_compose.capabilities.notification._store import RedisStore

__all__ = ["Notifier", "route"]

Callback = Callable[[Notification], Awaitable[Any] | Any]



def route(config: NotificationConfig, severity: str, title: str,
          tags: tuple[str, ...]) -> list[str]:
    """The channels a notification goes to: matching routes in order until one with ``stop``,
    else ``default_channels``.

    Example:
        >>> cfg = NotificationConfig(channels={"log": {"type": "log"}, "p": {"type": "callback"}},
        ...                          routes=[{"match": {"min_severity": "error"}, "channels": ["p"]}])
        >>> route(cfg, "critical", "x", ()), route(cfg, "info", "x", ())
        (['p'], ['log'])
    """
    out: list[str] = []
    matched = False
    for r in config.routes:
        if r.match.matches(severity, title, tags):
            matched = True
            out.extend(c for c in r.channels if c not in out)
            if r.stop:
                break
    return out if matched else list(config.default_channels)


class _State:
    """Process-wide state for one namespace (memory backend): dedup, digest, escalations
    (the Redis backend keeps them in :class:`RedisStore`)."""

    def __init__(self) -> None:
        self.dedup: dict[str, list[float]] = {}     # key -> [until, suppressed count]
        self.deferred: list[tuple[Notification, tuple[str, ...]]] = []
        self.skipped: dict[str, int] = {}           # channel -> rate-limited skips
        self.escalations: dict[str, tuple[float, Notification]] = {}
        self.sweep_at = 10_000


_STATES: dict[str, _State] = {}
_DOWN: Any = object()  # a Redis store operation failed: use this process's state


def _backend_errors() -> tuple[type[BaseException], ...]:
    from onex_compose.capabilities._fallback import backend_errors

    return tuple(backend_errors())


class Notifier:
    """Alerts with severity, routing, deduplication, per-channel rate limits, quiet hours with
    a digest, and escalation (the ``notifier`` facility).

    **Clock.** ``clock`` is a zero-argument callable returning wall-clock seconds since the
    epoch (default ``time.time``); it times dedup windows, rate limits, escalation and quiet
    hours. Tests inject one with ``node.notifier.clock = ManualClock(start=...)``. The
    background task (started by :meth:`start`) checks every ``tick_interval`` real seconds
    (default 1) whether quiet hours ended (then the digest goes out) or escalations are due;
    :meth:`flush` does the same at once.

    Example:
        >>> import asyncio
        >>> n = Notifier({"channels": {"cb": {"type": "callback"}}, "default_channels": ["cb"],
        ...               "dedup_window": 0})
        >>> got = []
        >>> @n.channel("cb")
        ... async def cb(note):
        ...     got.append(note.title)
        >>> r = asyncio.run(n.notify("DB down", "primary unreachable", severity="critical"))
        >>> r.channels, got
        ({'cb': 'sent'}, ['DB down'])
    """

    def __init__(self, config: NotificationConfig | Mapping[str, Any] | None = None, *,
                 node_id: str | None = None, metrics: Any = None, event_bus: Any = None,
                 retry: Callable[..., Awaitable[Any]] | None = None,
                 webhook_policy: Any = None, clock: Callable[[], float] | None = None) -> None:
        cfg: NotificationConfig = coerce_config(NotificationConfig, config, "notification")
        self.config = cfg
        self.node_id = node_id
        self.metrics = metrics
        self.event_bus = event_bus
        self.retry = retry
        self.webhook_policy = webhook_policy
        self._callbacks: dict[str, Callback] = {}
        self._channels = dict(cfg.channels)
        self._state = _STATES.setdefault(cfg.namespace, _State())
        self._redis: RedisStore | None = None
        if cfg.backend == "redis":
            from onex_compose.capabilities.notification._store import RedisStore

            self._redis = RedisStore(cfg.redis_url, cfg.namespace)
        self._next_tick = 0.0
        self.outage: str | None = None
        """While Redis is unreachable: the error (state falls back to this process)."""
        self._task: asyncio.Task[None] | None = None
        self._subs: list[Any] = []
        self.tick_interval = 1.0
        self._check_backends()
        self._limiter: Any = None
        if cfg.channel_limits:
            from onex_compose.capabilities.rate_limiting import RateLimiter

            self._limiter = RateLimiter(
                {"limit": 1_000_000, "guard_process": False, "backend": cfg.backend,
                 "redis_url": cfg.redis_url, "namespace": f"{cfg.namespace}:notify",
                 "redis_clock": "client",
                 "keys": {f"channel:{k}": v.model_dump() for k, v in cfg.channel_limits.items()}})
        from onex_compose.capabilities.timeout import TimeoutPolicy

        self._timer = TimeoutPolicy({"timeout": cfg.send_timeout, "guard_process": False},
                                    name="notification")
        self.clock = clock or time.time

    # ------------------------------------------------------------------ plumbing

    @property
    def clock(self) -> Callable[[], float]:
        """Wall-clock seconds (injectable: ``notifier.clock = ManualClock(start=...)``)."""
        return self._clock

    @clock.setter
    def clock(self, clock: Callable[[], float] | None) -> None:
        self._clock = clock or time.time
        if self._limiter is not None:
            self._limiter.clock = clock

    def __repr__(self) -> str:
        return (f"Notifier(channels={list(self._channels)}, routes={len(self.config.routes)}, "
                f"backend={self.config.backend!r}, dedup_window={self.config.dedup_window})")

    def _check_backends(self) -> None:
        from importlib.util import find_spec

        for name, ch in self._channels.items():
            if isinstance(ch, EmailChannel) and find_spec("aiosmtplib") is None:
                raise ConfigurationError(
                    f"notification channel {name!r} is an email channel, which needs aiosmtplib: "
                    "pip install 'onex-compose[email]'")
            if isinstance(ch, WebhookChannel) and find_spec("httpx") is None:
                raise ConfigurationError(
                    f"notification channel {name!r} is a webhook channel, which needs httpx: "
                    "pip install 'onex-compose[http]'")
            if isinstance(ch, EventBusChannel) and self.event_bus is None:
                raise ConfigurationError(
                    f"notification channel {name!r} publishes on the event bus, but the node "
                    "does not compose event_bus: add 'event_bus' to its capabilities")
        if self.config.subscribe_events and self.event_bus is None:
            raise ConfigurationError(
                "notification subscribe_events needs the event_bus capability: add 'event_bus' "
                "to the node's capabilities or remove subscribe_events")
        if self.config.backend == "redis":
            from onex_compose.capabilities._redis import require_client

            require_client("notification")

    def _count(self, severity: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.increment("notifications_total", 1,
                                   {"severity": severity, "outcome": outcome})

    def channel(self, name: str) -> Callable[[Callback], Callback]:
        """Register a callback channel (a decorator). A name not in the config becomes a
        callback channel usable with :meth:`test`; route to it by declaring
        ``{name: {type: callback}}`` in ``channels``."""
        def register(fn: Callback) -> Callback:
            if not callable(fn):
                raise NotificationError(f"channel {name!r}: {fn!r} is not callable")
            conf = self._channels.get(name)
            key = conf.name or name if isinstance(conf, CallbackChannel) else name
            if conf is None:
                self._channels[name] = CallbackChannel(type="callback")
            elif not isinstance(conf, CallbackChannel):
                raise NotificationError(f"channel {name!r} is a {conf.type} channel, not a "
                                        "callback channel")
            self._callbacks[key] = fn
            return fn
        return register

    # ------------------------------------------------------------------ API

    async def notify(self, title: str, message: str = "", *, severity: str = "info",
                     tags: tuple[str, ...] | list[str] = (), data: Any = None,
                     dedup_key: str | None = None,
                     raise_on_failure: bool = False) -> NotificationResult:
        """Route, deduplicate, rate limit and send one notification.

        Returns:
            a :class:`NotificationResult` (per-channel outcome, or why it was suppressed).

        Raises:
            NotificationError: an unknown severity.
            NotificationDeliveryError: ``raise_on_failure`` and every channel failed.
        """
        severity_rank(severity)
        tags = tuple(tags)
        now = self._clock()
        if self._redis is None:
            if self._state.escalations or self._state.deferred:
                await self._tick(now)
        elif now >= self._next_tick:  # on Redis at most once a second (round trips)
            self._next_tick = now + 1.0
            await self._tick(now)
        key = dedup_key or hashlib.sha1(
            "\x1f".join((severity, title, *sorted(tags))).encode()).hexdigest()
        nid = os.urandom(16).hex()
        repeats = await self._dedup(key, now)
        if repeats < 0:
            self._count(severity, "duplicate")
            return NotificationResult(nid, {}, "duplicate", 0)
        note = Notification(nid, title, message, severity, tags, data, key, now, repeats,
                            self.node_id)
        channels = route(self.config, severity, title, tags)
        qh = self.config.quiet_hours
        if qh is not None and severity_rank(severity) < severity_rank(qh.min_severity) \
                and self.in_quiet_hours(now):
            if qh.mode == "defer" and (self._redis is None or await self._shared(
                    self._redis.defer(note, tuple(channels))) is _DOWN):
                self._state.deferred.append((note, tuple(channels)))
            self._count(severity, "quiet")
            return NotificationResult(nid, dict.fromkeys(channels, "quiet_hours"),
                                      "quiet_hours", repeats)
        result = NotificationResult(nid, {}, None, repeats)
        send: list[str] = []
        for ch in channels:
            if self._limiter is None or ch not in self.config.channel_limits \
                    or await self._admit(ch):
                send.append(ch)
            else:
                result.channels[ch] = "rate_limited"
                if self._redis is None or await self._shared(self._redis.skip(ch)) is _DOWN:
                    self._state.skipped[ch] = self._state.skipped.get(ch, 0) + 1
        if not send:
            result.suppressed = "rate_limited"
            self._count(severity, "rate_limited")
            return result
        errors = await self._send_all(note, send, result)
        self._count(severity, "failed" if len(errors) == len(send) else "sent")
        esc = self.config.escalation
        if esc is not None and severity_rank(severity) >= severity_rank(esc.min_severity) and (
                self._redis is None or await self._shared(
                    self._redis.escalate_later(note, now + esc.after)) is _DOWN):
            self._state.escalations[nid] = (now + esc.after, note)
        if raise_on_failure and len(errors) == len(send):
            raise NotificationDeliveryError(nid, errors)
        return result

    async def acknowledge(self, notification_id: str, by: str | None = None) -> bool:
        """Stop the escalation of a notification; ``False`` if none was pending."""
        logger.info("notification {} acknowledged by {}", notification_id, by or "(unknown)")
        local = self._state.escalations.pop(notification_id, None) is not None
        if self._redis is not None:
            shared = await self._shared(self._redis.acknowledge(notification_id))
            if shared is not _DOWN:
                return bool(shared) or local
        return local

    async def flush(self) -> dict[str, int]:
        """Send the pending digest now (deferred notifications and rate-limit skips) and every
        escalation that is due. Returns ``{"digests": n, "escalations": m}``."""
        now = self._clock()
        escalated = await self._escalate(now)
        digests = await self._send_digest(now)
        return {"digests": digests, "escalations": escalated}

    async def test(self, channel: str) -> NotificationResult:
        """Send a test notification through one channel (no routing, dedup, limits or quiet
        hours)."""
        self._known(channel)
        note = Notification(uuid.uuid4().hex, "Test notification",
                            f"A test of channel {channel!r} from {self.node_id or 'onex'}.",
                            "info", ("test",), None, "", self._clock(), 0, self.node_id, "test")
        result = NotificationResult(note.id)
        await self._send_all(note, [channel], result)
        return result

    def in_quiet_hours(self, now: float | None = None) -> bool:
        """Whether ``now`` (default: the clock) is inside the configured quiet hours."""
        qh = self.config.quiet_hours
        if qh is None:
            return False
        t = self._clock() if now is None else now
        local = dt.datetime.fromtimestamp(t, zoneinfo.ZoneInfo(qh.timezone))
        minute: int = local.hour * 60 + local.minute
        start, end = qh.minutes("start"), qh.minutes("end")
        if start <= end:
            return bool(start <= minute < end)
        return bool(minute >= start or minute < end)

    async def pending(self) -> dict[str, int]:
        """Counts of deferred notifications, rate-limit skips and pending escalations."""
        if self._redis is not None:
            shared = await self._shared(self._redis.counts())
            if shared is not _DOWN:
                return dict(shared)
        return {"deferred": len(self._state.deferred),
                "skipped": sum(self._state.skipped.values()),
                "escalations": len(self._state.escalations)}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Subscribe to ``subscribe_events`` and start the background task (digest at the
        end of quiet hours, escalations)."""
        if self.event_bus is not None and not self._subs:
            for topic, severity in self.config.subscribe_events.items():
                self._subs.append(self.event_bus.subscribe(topic, self._on_event(severity)))
        if self._task is None and (self.config.quiet_hours or self.config.escalation):
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        """Stop the background task and unsubscribe (idempotent)."""
        for sub in self._subs:
            sub.unsubscribe()
        self._subs.clear()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, RuntimeError):
                pass

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick_interval)
            try:
                await self._tick(self._clock())
            except Exception as exc:
                logger.warning("notification: background tick failed: {}", exc)

    def _on_event(self, severity: str) -> Callable[[Any], Awaitable[None]]:
        async def handle(event: Any) -> None:
            payload = event.payload if isinstance(event.payload, Mapping) else {}
            if event.topic == "service_registry.changed":
                if payload.get("kind") != "offline":
                    return
                entry = payload.get("entry") or {}
                who = (entry.get("name") if isinstance(entry, Mapping) else None) \
                    or payload.get("instance_id") or payload.get("node_id")
                title = f"service offline: {who}"
                message = (f"instance {payload.get('instance_id')} of node "
                           f"{payload.get('node_id')} missed its TTL and went offline")
            else:
                kind = payload.get("kind") or payload.get("state") or ""
                title = f"{event.topic}{': ' + str(kind) if kind else ''}"
                message = json.dumps(event.payload, default=str)[:2000]
            await self.notify(title, message, severity=severity,
                              tags=("event", event.topic), data=payload or None)
        return handle

    # ------------------------------------------------------------------ internals

    def _known(self, channel: str) -> None:
        if channel not in self._channels:
            raise NotificationError(
                f"unknown channel {channel!r}{did_you_mean(channel, self._channels)}; "
                f"configured: {', '.join(self._channels)}")

    async def _shared(self, op: Awaitable[Any]) -> Any:
        """Await a Redis store operation; ``_DOWN`` (logged once per outage, counted, shown
        in :meth:`health`) when Redis is unreachable, so the caller uses this process's state."""
        try:
            value = await op
        except _backend_errors() as exc:
            if self.outage is None:
                logger.warning("notification: Redis unreachable ({}); dedup, digest and "
                               "escalation state falls back to this process until it returns",
                               type(exc).__name__)
            self.outage = f"{type(exc).__name__}: {exc}"
            if self.metrics is not None:
                self.metrics.increment("notification_backend_errors_total", 1, {})
            return _DOWN
        if self.outage is not None:
            logger.info("notification: Redis reachable again")
            self.outage = None
        return value

    def health(self) -> dict[str, Any]:
        """``healthy``, or ``degraded`` while Redis is unreachable (notifications still go out).

        Example:
            >>> Notifier({"namespace": "doc-health"}).health()["status"]
            'healthy'
        """
        report: dict[str, Any] = {"status": "healthy", "backend": self.config.backend,
                                  "channels": list(self._channels)}
        if self.outage is not None:
            report.update(status="degraded", reason=f"Redis unreachable: {self.outage}")
        return report

    async def _dedup(self, key: str, now: float) -> int:
        window = self.config.dedup_window
        if window <= 0:
            return 0
        if self._redis is not None:
            shared = await self._shared(self._redis.dedup(key, now, window))
            if shared is not _DOWN:
                return int(shared)
        slot = self._state.dedup.get(key)
        if slot is not None and now < slot[0]:
            slot[1] += 1
            return -1
        repeats = int(slot[1]) if slot is not None else 0
        dedup = self._state.dedup
        dedup[key] = [now + window, 0]
        if len(dedup) > self._state.sweep_at:  # amortised: a sweep at most per doubling
            for k in [k for k, v in dedup.items() if v[0] + window * 10 < now]:
                del dedup[k]
            self._state.sweep_at = max(10_000, 2 * len(dedup))
        return repeats

    async def _admit(self, channel: str) -> bool:
        if self._limiter is None or channel not in self.config.channel_limits:
            return True
        key = f"channel:{channel}"
        if self.config.backend == "redis":
            return bool(await self._limiter.ahit(key))
        return bool(self._limiter.hit(key))

    async def _tick(self, now: float) -> None:
        if self._redis is not None:
            if self.config.escalation is not None:
                await self._escalate(now)
            if self.config.quiet_hours is not None and not self.in_quiet_hours(now) \
                    and (self._state.deferred
                         or await self._shared(self._redis.has_deferred()) is True):
                await self._send_digest(now)
            return  # both include this process's fallback state
        if self._state.escalations:
            await self._escalate(now)
        # deferred notifications only accrue inside quiet hours: outside them, they are the
        # digest that is due now
        if self._state.deferred and not self.in_quiet_hours(now):
            await self._send_digest(now)

    async def _escalate(self, now: float) -> int:
        esc = self.config.escalation
        if esc is None:
            return 0
        due = [(nid, n) for nid, (at, n) in list(self._state.escalations.items()) if at <= now]
        for nid, _ in due:
            self._state.escalations.pop(nid, None)
        if self._redis is not None:
            shared = await self._shared(self._redis.take_due(now))
            if shared is not _DOWN:
                due += [(n.id, n) for n in shared]
        for nid, note in due:
            up = Notification(nid, f"[ESCALATED] {note.title}",
                              f"Not acknowledged within {esc.after:g} s.\n\n{note.message}",
                              note.severity, note.tags, note.data, note.dedup_key, now,
                              note.repeats, note.source, "escalation")
            await self._send_all(up, list(esc.channels), NotificationResult(nid))
            if self.metrics is not None:
                self.metrics.increment("notification_escalations_total", 1, {})
        return len(due)

    async def _send_digest(self, now: float) -> int:
        deferred, self._state.deferred = self._state.deferred, []
        skipped, self._state.skipped = self._state.skipped, {}
        if self._redis is not None:
            shared = await self._shared(self._redis.take_deferred())
            if shared is not _DOWN:
                deferred = list(shared) + deferred
            shared_skips = await self._shared(self._redis.take_skipped())
            if shared_skips is not _DOWN:
                for ch, k in dict(shared_skips).items():
                    skipped[ch] = skipped.get(ch, 0) + k
        if not deferred and not skipped:
            return 0
        channels: list[str] = []
        for _, chs in deferred:
            channels.extend(c for c in chs if c not in channels)
        channels.extend(c for c in skipped if c not in channels)
        lines = [f"[{n.severity.upper()}] {n.title}: {n.message}" for n, _ in deferred]
        lines += [f"channel {c!r} skipped {k} notification(s) over its rate limit"
                  for c, k in skipped.items()]
        worst = max((n.severity for n, _ in deferred), key=severity_rank, default="info")
        title = (f"Digest: {len(deferred)} deferred notification(s)" if deferred
                 else "Digest: rate-limited notifications")
        note = Notification(uuid.uuid4().hex, title, "\n".join(lines), worst, ("digest",),
                            {"deferred": [n.to_dict() for n, _ in deferred], "skipped": skipped},
                            "", now, 0, self.node_id, "digest")
        await self._send_all(note, channels, NotificationResult(note.id))
        return 1

    async def _send_all(self, note: Notification, channels: list[str],
                        result: NotificationResult) -> dict[str, str]:
        if len(channels) == 1:  # nothing to run concurrently: no tasks
            outcomes: list[str | None] = [await self._deliver(note, channels[0])]
        else:
            outcomes = list(await asyncio.gather(*(self._deliver(note, ch) for ch in channels)))
        errors: dict[str, str] = {}
        for ch, err in zip(channels, outcomes, strict=True):
            if err is None:
                result.channels[ch] = "sent"
            else:
                result.channels[ch] = f"failed: {err}"
                errors[ch] = err
                if self.metrics is not None:
                    self.metrics.increment("notification_channel_errors_total", 1,
                                           {"channel": ch})
                logger.warning("notification {} to channel {!r} failed: {}", note.id, ch, err)
        return errors

    async def _deliver(self, note: Notification, channel: str) -> str | None:
        """Send through one channel with its timeout and bounded retries; the error text or
        ``None``."""
        conf = self._channels.get(channel)
        if conf is None:
            return f"unknown channel {channel!r}"
        timeout = self.config.send_timeout
        attempts = self.config.retries + 1
        # the timeout capability's timer (one loop timer per deadline heap), not wait_for (a
        # task per send) nor asyncio.timeout (a TimerHandle per send)
        run = self._timer.run
        args = (conf, channel, note)
        operation = f"notification channel {channel}"
        try:
            if self.retry is not None:
                await self.retry(lambda: run(self._send, args, timeout=timeout,
                                             operation=operation))
                return None
            for attempt in range(attempts):
                try:
                    await run(self._send, args, timeout=timeout, operation=operation)
                    return None
                except (asyncio.CancelledError, KeyboardInterrupt):
                    raise
                except Exception:
                    if attempt + 1 == attempts:
                        raise
                    await asyncio.sleep(min(0.05 * 2 ** attempt, 1.0))
        except TimeoutError:
            return f"timed out after {timeout:g} s"
        except Exception as exc:
            return f"{type(exc).__name__}: {_scrub(str(exc), conf)}"
        return None

    async def _send(self, conf: Any, channel: str, note: Notification) -> None:
        if isinstance(conf, LogChannel):
            level = (conf.level or note.severity).upper()
            logger.log(level, "notification [{}] {}: {}{}", note.severity.upper(), note.title,
                       note.message, f" (repeats: {note.repeats})" if note.repeats else "")
        elif isinstance(conf, CallbackChannel):
            fn = self._callbacks.get(conf.name or channel)
            if fn is None:
                raise NotificationError(
                    f"no callback registered for channel {channel!r}; register one with "
                    f"@node.notifier.channel({(conf.name or channel)!r})")
            out = fn(note)
            if asyncio.iscoroutine(out) or isinstance(out, asyncio.Future):
                await out
        elif isinstance(conf, EventBusChannel):
            await self.event_bus.publish(conf.topic.replace("{severity}", note.severity),
                                         note.to_dict())
        elif isinstance(conf, WebhookChannel):
            from onex_compose.capabilities.notification._channels import send_webhook

            await send_webhook(conf, note, self.webhook_policy)
        elif isinstance(conf, EmailChannel):
            from onex_compose.capabilities.notification._channels import send_email

            await send_email(conf, note, self.config.send_timeout)
        else:  # pragma: no cover - the config union is closed
            raise NotificationError(f"channel {channel!r} has an unknown type")


def _scrub(text: str, conf: Any) -> str:
    for attr in ("password", "secret"):
        value = getattr(conf, attr, None)
        if value is not None:
            raw = value.get_secret_value()
            if raw:
                text = text.replace(raw, "***")
    return text


