"""webhook: outgoing webhooks through a transactional outbox, and verification of incoming ones.

``self.webhooks`` is a :class:`Webhooks`, storing through the ``database`` capability in
``<namespace>_webhook_subscriptions`` / ``_deliveries`` / ``_replay``:

* **Outbox.** ``publish(type, data)`` writes one delivery row per matching active subscription,
  inside the caller's open ``db.transaction()`` when there is one (the rows roll back with the
  caller's data). A delivery worker, started lazily on the running loop, claims due rows with a
  lease (one ``UPDATE … RETURNING`` over ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, atomic on
  SQLite), so one attempt of a delivery runs at a time across processes.
* **Standard Webhooks.** The body is ``{"type", "timestamp", "data"}``; headers ``webhook-id``
  (stable across retries: receivers deduplicate on it), ``webhook-timestamp`` (fresh per
  attempt), ``webhook-signature`` (``v1,<base64 HMAC-SHA256>``, one per valid secret during a
  rotation), ``content-type``, ``user-agent`` and ``traceparent`` (a CLIENT span per attempt when
  tracing is composed). Signing and verification live in ``_signing.py`` (reusable).
* **Responses.** 2xx delivered; connect errors, timeouts, 408, 429 and 5xx retried on
  ``retry_schedule`` (± ``jitter``), honouring ``Retry-After`` (seconds or HTTP-date, capped at
  ``max_retry_after``); another 4xx fails at once; 410 disables the subscription; 3xx fails
  (redirects are never followed). ``disable_after_failed_deliveries`` exhausted deliveries in a
  row disable the subscription (``webhook.subscription_disabled`` on the event bus).
* **SSRF** (``_ssrf.py``, reusable): at ``subscribe`` and at every attempt the URL's scheme,
  userinfo, host allow-list and port are checked, the host resolved (injectable resolver) and
  refused if *any* address is not public; the request goes to the vetted IP with the original
  ``Host`` and TLS SNI, so DNS rebinding cannot redirect it.
* **Incoming.** ``verify(body, headers)`` checks headers, timestamp skew, signatures and
  replays (ids remembered for ``replay_window`` in memory, Redis or the database; recorded only
  after a valid signature). ``asgi_receiver(handler)`` is a framework-free ASGI app.

Example:
    >>> import asyncio
    >>> from onex_compose import NodeEffect, compose
    >>> Node = compose(NodeEffect, ["webhook"])
    >>> node = Node(capability_config={"database": {"namespace": "doctest_webhook"},
    ...                                "webhook": {"allow_http": True}})
    >>> async def public(host, port):
    ...     return ["93.184.215.14"]
    >>> node.webhooks.resolver = public
    >>> async def demo():
    ...     sub = await node.webhooks.subscribe("http://hooks.example.com/in", ["order.*"])
    ...     ids = await node.webhooks.publish("order.created", {"id": 1})
    ...     await node.webhooks.unsubscribe(sub.id)
    ...     await node.webhooks.aclose()
    ...     return sub.secret.startswith("whsec_"), len(ids)
    >>> asyncio.run(demo())
    (True, 1)
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any, cast

from onex_compose import coerce_config, facility, has_capability
from onex_compose.capabilities.webhook._model import (
    DELIVERY_STATUSES,
    TARGET_REASONS,
    VERIFY_REASONS,
    Delivery,
    WebhookConfig,
    WebhookError,
    WebhookNotFoundError,
    WebhookPayloadTooLargeError,
    WebhookProtocol,
    WebhookSubscription,
    WebhookTargetError,
    WebhookVerificationError,
)
from onex_compose.capabilities.webhook._signing import (
    MemoryReplayStore,
    Signer,
    Verifier,
    generate_secret,
    secret_key,
    sign,
)
from onex_compose.capabilities.webhook._ssrf import (
    TargetPolicy,
    VettedTarget,
    check_url,
    is_public_address,
    normalize_ip,
    system_resolver,
    vet,
)
from onex_compose.capabilities.webhook._webhooks import (
    DISABLED_EVENT,
    SECRET_ENV,
    Webhooks,
    parse_retry_after,
)
from onex_compose.exceptions import ConfigurationError

__all__ = [
    "DELIVERY_STATUSES",
    "DISABLED_EVENT",
    "SECRET_ENV",
    "TARGET_REASONS",
    "VERIFY_REASONS",
    "Delivery",
    "MemoryReplayStore",
    "MixinWebhook",
    "Signer",
    "TargetPolicy",
    "Verifier",
    "VettedTarget",
    "WebhookConfig",
    "WebhookError",
    "WebhookNotFoundError",
    "WebhookPayloadTooLargeError",
    "WebhookProtocol",
    "WebhookSubscription",
    "WebhookTargetError",
    "WebhookVerificationError",
    "Webhooks",
    "check_url",
    "generate_secret",
    "is_public_address",
    "normalize_ip",
    "parse_retry_after",
    "secret_key",
    "sign",
    "system_resolver",
    "vet",
]


def require_httpx() -> None:
    """Fail at setup, with the fix, when httpx (the ``http`` extra) is missing."""
    if importlib.util.find_spec("httpx") is None:
        raise ConfigurationError(
            "webhook: outgoing deliveries need httpx, which is not installed. Install it with: "
            "pip install 'onex-compose[http]'", capability="webhook")


class MixinWebhook:
    """Webhook publishing and subscription management: ``self.webhooks`` (a :class:`Webhooks`).

    Requires ``database``, ``serialization`` and ``metrics``; uses ``tracing``, ``event_bus``,
    ``health_check``, ``logging`` and ``authentication`` when composed (order-only).

    Example:
        >>> from onex_compose import NodeEffect, compose
        >>> compose(NodeEffect, ["webhook"]).__name__
        'NodeEffect[database,metrics,serialization,webhook]'
    """

    __onex_capability__ = "webhook"
    __slots__ = ()

    def setup_webhook(self, config: WebhookConfig | Mapping[str, Any] | None = None) -> None:
        """Build ``self.webhooks``; register its migration and health check.

        Raises:
            ConfigurationError: httpx is missing (``pip install 'onex-compose[http]'``), or
                ``replay_store: redis`` without redis-py.
        """
        cfg = coerce_config(WebhookConfig, config, "webhook")
        node = cast(Any, self)
        node.webhooks = _build(node, cfg)
        if has_capability(self, "health_check"):
            node.register_health_check(node.webhooks.health, name="webhook")

    @facility
    def webhooks(self) -> Webhooks:
        """The node's webhooks (default config when setup never ran)."""
        return _build(cast(Any, self), WebhookConfig())

    async def start_webhook(self) -> None:
        """Start the delivery worker on the running loop (it also starts at the first
        ``publish``)."""
        cast(Any, self).webhooks.ensure_worker()

    async def close_webhook(self) -> None:
        """Stop the running loop's delivery worker and close its HTTP client."""
        hooks = getattr(self, "webhooks", None)
        if isinstance(hooks, Webhooks):
            await hooks.aclose()


def _build(node: Any, cfg: WebhookConfig) -> Webhooks:
    require_httpx()
    old = getattr(node, "webhooks", None)
    kept: dict[str, Any] = {}
    if isinstance(old, Webhooks):
        kept = {"clock": old.clock, "resolver": old.resolver, "transport": old.transport,
                "rng": old.rng}
    hooks = Webhooks(cfg, db=node.db, serializer=node.serializer, metrics=node.metrics, node=node,
                    tracing=has_capability(node, "tracing"),
                    event_bus=has_capability(node, "event_bus"),
                    logging=has_capability(node, "logging"),
                    authentication=has_capability(node, "authentication"), **kept)
    if isinstance(old, Webhooks):
        hooks.autostart = old.autostart
    return hooks
