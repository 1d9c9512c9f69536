"""notification: alerts with severity, routing to channels, deduplication, per-channel rate
limits, quiet hours with a digest, and escalation (seed 000's ``MixinNotification``).

What it gives a node:

* ``self.notifier``: a :class:`Notifier`::

      r = await node.notifier.notify("DB down", "primary unreachable", severity="critical",
                                     tags=("db",))
      await node.notifier.acknowledge(r.id, by="alice")   # stops escalation
      @node.notifier.channel("pager")                     # a callback channel
      async def pager(n: Notification) -> None: ...
      await node.notifier.flush()                         # pending digest and due escalations
      await node.notifier.test("email")                   # a test through one channel

Channels: ``log``, ``event_bus`` (``notifications.{severity}``), ``webhook`` (Standard Webhooks
signing and the webhook capability's SSRF checks, its policy widening the channel's own when
webhook is composed), ``email`` (aiosmtplib, ``pip install 'onex-compose[email]'``) and
``callback``. Channels run concurrently, each with ``send_timeout`` and ``retries`` (through
``with_retry`` when retry is composed); one failing or hanging channel never blocks another.

Semantics: severities ``debug < info < warning < error < critical``; routes in order until
one with ``stop``; dedup by ``dedup_key`` (or severity + title + sorted tags) within
``dedup_window``, the next delivered one carrying ``repeats``; per-channel GCRA limits
(the rate_limiting module's :class:`RateLimiter`, owned here, so composing this capability
never installs rate_limiting's ``process()`` guard); quiet hours in a zoneinfo timezone
(correct across DST) deferring into one digest or dropping; escalation of unacknowledged
notifications after ``after`` seconds (background task from ``start()``, or ``flush()``).
``subscribe_events`` turns event bus events into notifications (for
``service_registry.changed`` only ``offline`` changes).

State: ``backend: memory`` keeps dedup, deferred notifications (the digest), rate-limit skips
and pending escalations process-wide per ``namespace``; ``backend: redis`` shares them across
processes (one process sends, the others suppress its duplicates; a digest and an escalation
are taken atomically, so exactly one process sends each). While Redis is unreachable the state
falls back to the process (logged once, ``notification_backend_errors_total``, ``health()``
degraded; registered with health_check when composed).

The clock is injectable: ``node.notifier.clock = ManualClock(start=...)`` (epoch seconds).

Example:
    >>> import asyncio
    >>> from onex_compose import NodeEffect, compose
    >>> node = compose(NodeEffect, ["notification"])(capability_config={"notification": {
    ...     "channels": {"pager": {"type": "callback"}}, "default_channels": ["pager"],
    ...     "dedup_window": 0}})
    >>> seen = []
    >>> @node.notifier.channel("pager")
    ... def pager(n):
    ...     seen.append((n.severity, n.title))
    >>> r = asyncio.run(node.notifier.notify("DB down", severity="critical"))
    >>> r.channels, seen
    ({'pager': 'sent'}, [('critical', 'DB down')])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from onex_compose import coerce_config, facility, has_capability
from onex_compose.capabilities.notification._model import (
    SEVERITIES,
    Notification,
    NotificationConfig,
    NotificationDeliveryError,
    NotificationError,
    NotificationProtocol,
    NotificationResult,
)
from onex_compose.capabilities.notification._notifier import Notifier, route

__all__ = [
    "SEVERITIES",
    "MixinNotification",
    "Notification",
    "NotificationConfig",
    "NotificationDeliveryError",
    "NotificationError",
    "NotificationProtocol",
    "NotificationResult",
    "Notifier",
    "route",
]


def _build(node: Any, cfg: NotificationConfig, old: Any = None) -> Notifier:
    retry = None
    if has_capability(node, "retry"):
        attempts = cfg.retries + 1

        async def retry(fn: Any) -> Any:
            return await node.with_retry(fn, max_attempts=attempts)
    policy = node.webhooks.policy if has_capability(node, "webhook") else None
    notifier = Notifier(
        cfg, node_id=getattr(node, "node_id", None), metrics=node.metrics,
        event_bus=node.event_bus if has_capability(node, "event_bus") else None,
        retry=retry, webhook_policy=policy,
        clock=old.clock if isinstance(old, Notifier) else None)
    if isinstance(old, Notifier):
        notifier._callbacks.update(old._callbacks)
    return notifier


class MixinNotification:
    """Alert and notification management: ``self.notifier`` (see the module docstring).

    Requires ``metrics``; uses ``event_bus``, ``webhook``, ``retry``, ``logging``, ``tracing``
    and ``service_registry`` when composed (order only). Inject a clock with
    ``node.notifier.clock = ManualClock(start=...)``.

    Example:
        >>> from onex_compose import NodeEffect
        >>> class Ops(NodeEffect, MixinNotification):
        ...     pass
        >>> Ops(node_id="ops-1").notifier.config.default_channels
        ('log',)
    """

    __onex_capability__ = "notification"
    __slots__ = ()

    def setup_notification(self, config: NotificationConfig | Mapping[str, Any] | None
                           = None) -> None:
        """Build ``self.notifier`` (a reconfigured node keeps its clock and callbacks)."""
        cfg = coerce_config(NotificationConfig, config, "notification")
        node: Any = self
        node.notifier = _build(node, cfg, getattr(node, "notifier", None))
        if has_capability(self, "health_check"):
            node.register_health_check(node.notifier.health, name="notification")

    @facility
    def notifier(self) -> Notifier:
        """The node's notifier (default config if ``setup_notification`` never ran)."""
        return _build(self, NotificationConfig())

    async def start_notification(self) -> None:
        """Subscribe to ``subscribe_events`` and start the digest/escalation task."""
        node: Any = self
        await node.notifier.start()

    async def close_notification(self) -> None:
        """Stop the background task and the subscriptions (idempotent)."""
        node: Any = self
        notifier = getattr(node, "notifier", None)
        if isinstance(notifier, Notifier):
            await notifier.aclose()
