"""The :class:`Webhooks` facility (``self.webhooks``): subscriptions, the outbox, the delivery
worker and the incoming side."""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from onex_compose.capabilities._log import logger
from onex_compose.capabilities.database import DatabaseIntegrityError
from onex_compose.capabilities.webhook._model import (
    DELIVERY_STATUSES,
    Delivery,
    WebhookConfig,
    WebhookError,
    WebhookNotFoundError,
    WebhookPayloadTooLargeError,
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
)
from onex_compose.capabilities.webhook._ssrf import Resolver, TargetPolicy, check_url, vet
from onex_compose.exceptions import ConfigurationError

OWNER = "webhook"
DISABLED_EVENT = "webhook.subscription_disabled"
SECRET_ENV = "ONEX_WEBHOOK_SECRET"
_POLL = 1.0
_LEASE_MARGIN = 30.0
_SUB_COLS = ("id", "url", "secrets", "active", "failures")
_BATCH = 8  # a step claims up to _BATCH * workers deliveries
_COALESCE = 0.005  # seconds the worker waits after a wake-up before claiming
_DELIVERY_COLS = ("id, msg_id, subscription_id, event_type, status, attempts, last_status_code, "
                  "last_error, next_attempt_at, created_at")


def _no_metric(*_: Any, **__: Any) -> None:
    return None


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def _status_class(code: int | None) -> str:
    if code is None:
        return "error"
    return f"{code // 100}xx" if 200 <= code < 600 else "error"


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds a ``Retry-After`` value asks to wait (delta-seconds or an HTTP-date), or ``None``.

    Example:
        >>> parse_retry_after("7", 0.0)
        7.0
        >>> parse_retry_after("Thu, 01 Jan 1970 00:01:00 GMT", 30.0)
        30.0
        >>> parse_retry_after("soon", 0.0) is None
        True
    """
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def _like(pattern: str) -> str:
    """A ``*`` / ``?`` pattern as a LIKE pattern (escape ``\\``)."""
    out = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return out.replace("*", "%").replace("?", "_")


def _migration_sql(ns: str) -> dict[str, list[str]]:
    s, d, r = f"{ns}_webhook_subscriptions", f"{ns}_webhook_deliveries", f"{ns}_webhook_replay"
    p = f"{ns}_webhook_patterns"
    common = [
        f"CREATE TABLE IF NOT EXISTS {s} (id VARCHAR(40) PRIMARY KEY, url TEXT NOT NULL, "
        "events TEXT NOT NULL, secrets TEXT NOT NULL, description TEXT NOT NULL, "
        "active INTEGER NOT NULL, failures INTEGER NOT NULL, created_at DOUBLE PRECISION NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS {p} (subscription_id VARCHAR(40) NOT NULL, "
        "pattern VARCHAR(400) NOT NULL, PRIMARY KEY (subscription_id, pattern))",
        f"CREATE TABLE IF NOT EXISTS {d} (id VARCHAR(80) PRIMARY KEY, msg_id VARCHAR(80) NOT NULL, "
        "subscription_id VARCHAR(40) NOT NULL, event_type VARCHAR(200) NOT NULL, body TEXT NOT NULL, "
        "status VARCHAR(16) NOT NULL, attempts INTEGER NOT NULL, next_attempt_at DOUBLE PRECISION, "
        "lease_until DOUBLE PRECISION NOT NULL, last_status_code INTEGER, last_error TEXT, "
        "idempotency_key VARCHAR(200), trace_headers TEXT, created_at DOUBLE PRECISION NOT NULL)",
        f"CREATE INDEX IF NOT EXISTS {d}_due ON {d} (status, next_attempt_at)",
        f"CREATE UNIQUE INDEX IF NOT EXISTS {d}_idem ON {d} (subscription_id, idempotency_key)",
        f"CREATE TABLE IF NOT EXISTS {r} (id VARCHAR(200) PRIMARY KEY, "
        "expires_at DOUBLE PRECISION NOT NULL)",
    ]
    return {"sqlite": common, "postgresql": common}


class _LoopState:
    """What belongs to one event loop: the worker task, its wake-up event, the HTTP client."""

    __slots__ = ("client", "idle", "inflight", "task", "wake")

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()
        self.client: Any = None
        self.inflight = 0


class Webhooks:
    """Outgoing webhooks through a transactional outbox, and verification of incoming ones.

    Args:
        config: the ``webhook`` subcontract.
        db: the node's ``Database`` (tables ``<namespace>_webhook_*``).
        serializer: the node's serializer (the request body is its JSON).
        metrics: the node's metrics (optional).
        node: the node (held weakly): ``tracer``, ``event_bus``, ``log`` when composed.
        tracing / event_bus / logging / authentication: whether those are composed.
        clock: epoch seconds for schedules and timestamps (``time.time``); tests inject one.
        resolver: ``async (host, port) -> [ip, ...]`` (the loop's ``getaddrinfo``).
        transport: an httpx transport for the client (tests record requests with one).
        rng: a ``random.Random`` for the jitter.

    ``clock``, ``resolver``, ``transport``, ``rng`` and ``autostart`` (``False``: publish does
    not start the worker; tests drive :meth:`step` themselves) are plain attributes: assign
    them to inject (a reconfiguration keeps them).
    """

    def __init__(self, config: WebhookConfig, *, db: Any, serializer: Any, metrics: Any = None,
                 node: Any = None, tracing: bool = False, event_bus: bool = False,
                 logging: bool = False, authentication: bool = False,
                 clock: Callable[[], float] | None = None, resolver: Resolver | None = None,
                 transport: Any = None, rng: random.Random | None = None) -> None:
        self.config = config
        self.db = db
        self.serializer = serializer
        self.clock = clock or time.time
        self.resolver = resolver
        self.transport = transport
        self.rng = rng or random.Random()
        self.autostart = True
        self.policy = TargetPolicy.from_config(config)
        self._node_ref = weakref.ref(node) if node is not None else None
        self._event_bus = event_bus
        self._authentication = authentication
        self._log = node.log if (logging and node is not None) else logger
        self._tracer = None      # spans (tracing composed, "webhook" instrumented)
        self._propagator = None  # the publisher's trace context travels with the delivery
        if tracing and node is not None:
            self._propagator = node.tracer
            from onex_compose.capabilities._traced import tracer_for

            self._tracer = tracer_for(node, "webhook")
        ns = db.config.namespace
        self.subs_table = f"{ns}_webhook_subscriptions"
        self.deliveries_table = f"{ns}_webhook_deliveries"
        self.replay_table = f"{ns}_webhook_replay"
        self.patterns_table = f"{ns}_webhook_patterns"
        from onex_compose.capabilities.database import Migration

        db.register_migrations(OWNER, [Migration("001_webhook", _migration_sql(ns))])
        m = metrics
        self._metrics = m
        self._inc = m.increment if m is not None else _no_metric
        self._hist = m.histogram if m is not None else _no_metric
        self._gauge = m.gauge if m is not None else _no_metric
        self._verify_counters: dict[str, Callable[..., Any]] = {}
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = \
            weakref.WeakKeyDictionary()
        self._memory_replay = MemoryReplayStore()
        self._redis_sync: Any = None
        self._redis_async: dict[int, Any] = {}
        self._outage: str | None = None
        self._incoming_secret = self._configured_secret()
        if config.replay_store == "redis":
            from onex_compose.capabilities._redis import redis_url, require_client

            require_client("webhook")
            self._redis_url = redis_url(config.redis_url)
        self._verifier = Verifier(
            [self._incoming_secret] if self._incoming_secret else [],
            tolerance=config.verify_tolerance, replay_window=config.replay_window,
            replay=self._memory_replay, clock=self._now)

    # -- plumbing ----------------------------------------------------------------------------

    def _now(self) -> float:
        return self.clock()

    def __repr__(self) -> str:
        return (f"Webhooks(db={self.db.dialect}, table={self.deliveries_table!r}, "
                f"workers={self.config.workers}, allow_http={self.config.allow_http}, "
                f"allow_private_networks={self.config.allow_private_networks})")

    def _configured_secret(self) -> str | None:
        import os

        value = os.environ.get(SECRET_ENV) or None
        if value is not None:
            secret_key(value)
        return value

    @property
    def _node(self) -> Any:
        return self._node_ref() if self._node_ref is not None else None

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            state = self._loops[loop] = _LoopState()
        return state

    def _client(self, state: _LoopState) -> Any:
        if state.client is None:
            import httpx

            cfg = self.config
            state.client = httpx.AsyncClient(
                transport=self.transport, follow_redirects=False, trust_env=False,
                timeout=httpx.Timeout(cfg.timeout, connect=cfg.connect_timeout))
        return state.client

    def ensure_worker(self) -> None:
        """Start the delivery worker on the running loop (once per loop)."""
        state = self._state()
        if state.task is None or state.task.done():
            state.task = asyncio.get_running_loop().create_task(self._worker(state),
                                                                name="onex-webhook-worker")
        state.wake.set()

    async def aclose(self) -> None:
        """Stop the running loop's worker (in-flight attempts are cancelled; their leases
        expire and another worker takes them) and close its HTTP client."""
        loop = asyncio.get_running_loop()
        state = self._loops.pop(loop, None)
        if state is None:
            state = _LoopState()  # nothing ran on this loop; the clients may still be open
        if state.task is not None and not state.task.done():
            state.task.cancel()
            try:
                await state.task
            except (asyncio.CancelledError, Exception):
                pass
        if state.client is not None:
            await state.client.aclose()
        client = self._redis_async.pop(id(loop), None)
        if client is not None:
            await client.aclose()
        if self._redis_sync is not None:
            self._redis_sync.close()
            self._redis_sync = None

    async def _migrated(self) -> None:
        await self.db.ensure_migrated(OWNER)

    # -- subscriptions -----------------------------------------------------------------------

    @staticmethod
    def _events(events: Sequence[str]) -> list[str]:
        if isinstance(events, str) or not events:
            raise ValueError("events must be a non-empty list of event types or patterns "
                             "(e.g. ['order.*'])")
        out = []
        for e in events:
            if not isinstance(e, str) or not e or len(e) > 200:
                raise ValueError(f"an event pattern must be a non-empty string of at most 200 "
                                 f"characters, got {e!r}")
            if "[" in e or "]" in e:
                raise ValueError(f"event patterns use '*' (any run) and '?' (one character) "
                                 f"only, got {e!r}")
            out.append(e)
        return out

    def _to_sub(self, row: Mapping[str, Any], secret: str | None = None) -> WebhookSubscription:
        return WebhookSubscription(row["id"], row["url"], tuple(json.loads(row["events"])),
                                   secret, bool(row["active"]), row["description"])

    async def _sub_row(self, sub_id: str) -> Mapping[str, Any]:
        await self._migrated()
        row = await self.db.fetch_one(f"SELECT * FROM {self.subs_table} WHERE id = :id",
                                      {"id": sub_id})
        if row is None:
            raise WebhookNotFoundError(f"no webhook subscription {sub_id!r}", id=sub_id)
        return dict(row)

    async def subscribe(self, url: str, events: Sequence[str], secret: str | None = None,
                        description: str = "") -> WebhookSubscription:
        """Subscribe ``url`` to event types matching ``events`` (patterns with ``*`` for any
        run of characters and ``?`` for one, case-sensitive).

        The URL is checked against the SSRF policy now (and again at every attempt).
        ``secret`` (``whsec_…``) is generated when ``None``; it is returned only here.

        Raises:
            WebhookTargetError: the URL is refused (its ``reason`` says why).
            ValueError: empty ``events`` or a secret that is not ``whsec_`` + base64.
        """
        patterns = self._events(events)
        await vet(url, self.policy, resolver=self.resolver)
        secret = secret or generate_secret()
        secret_key(secret)
        await self._migrated()
        sub_id = "sub_" + uuid.uuid4().hex
        async with self.db.transaction() as tx:
            await tx.execute(
                f"INSERT INTO {self.subs_table} (id, url, events, secrets, description, active, "
                "failures, created_at) VALUES (:id, :url, :events, :secrets, :description, 1, 0, "
                ":at)", {"id": sub_id, "url": url, "events": json.dumps(patterns),
                         "secrets": json.dumps([[secret, None]]), "description": description,
                         "at": self.clock()})
            await self._write_patterns(tx, sub_id, patterns)
        return WebhookSubscription(sub_id, url, tuple(patterns), secret, True, description)

    async def rotate_secret(self, subscription_id: str, overlap: float = 86400) -> str:
        """A new secret for the subscription; the old one keeps signing for ``overlap``
        seconds (both signatures are sent meanwhile). Returns the new secret."""
        if overlap < 0:
            raise ValueError(f"overlap must be >= 0 seconds, got {overlap}")
        row = await self._sub_row(subscription_id)
        now = self.clock()
        new = generate_secret()
        kept = [[s, exp] for s, exp in json.loads(row["secrets"])[1:] if exp is not None and exp > now]
        current = json.loads(row["secrets"])[0][0]
        secrets = [[new, None], *([[current, now + overlap]] if overlap > 0 else []), *kept]
        await self.db.execute(f"UPDATE {self.subs_table} SET secrets = :s WHERE id = :id",
                              {"s": json.dumps(secrets), "id": subscription_id})
        return str(new)

    async def update(self, subscription_id: str, *, events: Sequence[str] | None = None,
                     url: str | None = None, description: str | None = None,
                     active: bool | None = None) -> WebhookSubscription:
        """Change a subscription's events, URL (checked again), description or ``active``
        (re-activating also resets its count of consecutive failed deliveries)."""
        row = dict(await self._sub_row(subscription_id))
        patterns = None if events is None else self._events(events)
        if patterns is not None:
            row["events"] = json.dumps(patterns)
        if url is not None:
            await vet(url, self.policy, resolver=self.resolver)
            row["url"] = url
        if description is not None:
            row["description"] = description
        if active is not None:
            row["active"] = 1 if active else 0
            if active:
                row["failures"] = 0
        async with self.db.transaction() as tx:
            await tx.execute(
                f"UPDATE {self.subs_table} SET events = :events, url = :url, description = "
                ":description, active = :active, failures = :failures WHERE id = :id", row)
            if patterns is not None:
                await self._write_patterns(tx, subscription_id, patterns)
        return self._to_sub(row)

    async def unsubscribe(self, subscription_id: str) -> None:
        """Remove a subscription; its pending deliveries fail (``unsubscribed``)."""
        await self._sub_row(subscription_id)
        async with self.db.transaction() as tx:
            await tx.execute(f"DELETE FROM {self.subs_table} WHERE id = :id", {"id": subscription_id})
            await tx.execute(f"DELETE FROM {self.patterns_table} WHERE subscription_id = :id",
                             {"id": subscription_id})
            await tx.execute(
                f"UPDATE {self.deliveries_table} SET status = 'failed', last_error = "
                "'unsubscribed', next_attempt_at = NULL WHERE subscription_id = :id AND "
                "status = 'pending'", {"id": subscription_id})

    async def _write_patterns(self, tx: Any, sub_id: str, patterns: Sequence[str]) -> None:
        """The subscription's patterns, as the dialect matches them in ``publish``: GLOB
        patterns on SQLite (case-sensitive ``*`` / ``?``), LIKE patterns on PostgreSQL."""
        await tx.execute(f"DELETE FROM {self.patterns_table} WHERE subscription_id = :id",
                         {"id": sub_id})
        pg = self.db.dialect == "postgresql"
        for pattern in dict.fromkeys(patterns):
            stored = _like(pattern) if pg else pattern
            await tx.execute(f"INSERT INTO {self.patterns_table} (subscription_id, pattern) "
                             "VALUES (:id, :p)", {"id": sub_id, "p": stored})

    async def subscriptions(self) -> list[WebhookSubscription]:
        """Every subscription (secrets are not returned)."""
        await self._migrated()
        rows = await self.db.fetch_all(f"SELECT * FROM {self.subs_table} ORDER BY created_at, id")
        return [self._to_sub(r) for r in rows]

    # -- publishing --------------------------------------------------------------------------

    def _body(self, event_type: str, data: Any) -> bytes:
        body: bytes = self.serializer.dumps(
            {"type": event_type, "timestamp": _iso(self.clock()), "data": data}, format="json")
        if len(body) > self.config.max_payload_bytes:
            raise WebhookPayloadTooLargeError(
                f"webhook payload for {event_type!r} is {len(body)} bytes, over "
                f"max_payload_bytes {self.config.max_payload_bytes}",
                size=len(body), limit=self.config.max_payload_bytes)
        return body

    async def publish(self, event_type: str, data: Any, idempotency_key: str | None = None
                      ) -> list[str]:
        """Write one delivery per matching active subscription to the outbox; their ids.

        Inside an open ``db.transaction()`` the rows are written in it (they roll back with
        the caller's data). A repeated ``idempotency_key`` returns the first call's ids and
        writes nothing. The delivery worker is started on the running loop.

        Raises:
            WebhookPayloadTooLargeError: the body is over ``max_payload_bytes``.
            SerializationError: ``data`` is not serializable (naming the path).
            DatabaseError: the outbox could not be written (nothing was published).
        """
        if not isinstance(event_type, str) or not event_type or len(event_type) > 200:
            raise ValueError(f"event_type must be a non-empty string of at most 200 characters, "
                             f"got {event_type!r}")
        body = self._body(event_type, data).decode()
        await self._migrated()
        now = self.clock()
        trace = None
        if self._propagator is not None:
            trace = json.dumps(self._propagator.inject({})) or None
        db = self.db
        if idempotency_key is not None:
            done = await self._idempotent(idempotency_key)
            if done:
                return done
        # one statement: the matching (GLOB / LIKE on the patterns table) and the insert, so
        # it is atomic on its own, and joins the caller's open transaction when there is one
        try:
            rows = await db.fetch_all(self._publish_sql, {
                "pub": uuid.uuid4().hex, "type": event_type, "body": body, "now": now,
                "k": idempotency_key, "trace": trace})
        except DatabaseIntegrityError:
            if idempotency_key is None:
                raise
            return await self._idempotent(idempotency_key)  # a concurrent publish won
        ids = [r["id"] for r in rows]
        if ids and self.autostart:
            self.ensure_worker()
        return ids

    @property
    def _publish_sql(self) -> str:
        sql = self.__dict__.get("_publish_sql_text")
        if sql is None:
            pg = self.db.dialect == "postgresql"
            match = "CAST(:type AS TEXT) LIKE p.pattern ESCAPE '\\'" if pg \
                else ":type GLOB p.pattern"
            t, d = "VARCHAR(200)", "DOUBLE PRECISION"
            sql = (
                f"INSERT INTO {self.deliveries_table} (id, msg_id, subscription_id, event_type, "
                "body, status, attempts, next_attempt_at, lease_until, idempotency_key, "
                "trace_headers, created_at) "
                f"SELECT 'dlv_' || CAST(:pub AS TEXT) || '_' || SUBSTR(s.id, 5), "
                f"'msg_' || CAST(:pub AS TEXT) || '_' || SUBSTR(s.id, 5), s.id, "
                f"CAST(:type AS {t}), CAST(:body AS TEXT), "
                f"'pending', 0, CAST(:now AS {d}), 0, CAST(:k AS {t}), CAST(:trace AS TEXT), "
                f"CAST(:now AS {d}) FROM {self.subs_table} s WHERE s.active = 1 AND EXISTS "
                f"(SELECT 1 FROM {self.patterns_table} p WHERE p.subscription_id = s.id AND "
                f"{match}) RETURNING id")
            self.__dict__["_publish_sql_text"] = sql
        return sql

    async def _idempotent(self, key: str) -> list[str]:
        rows = await self.db.fetch_all(
            f"SELECT id FROM {self.deliveries_table} WHERE idempotency_key = :k ORDER BY id",
            {"k": key})
        return [r["id"] for r in rows]

    async def deliveries(self, subscription_id: str | None = None, status: str | None = None,
                         limit: int = 100) -> list[Delivery]:
        """Deliveries, newest first, optionally of one subscription and/or one status."""
        if status is not None and status not in DELIVERY_STATUSES:
            raise ValueError(f"status must be one of {', '.join(DELIVERY_STATUSES)}, got {status!r}")
        await self._migrated()
        where, params = [], {"n": int(limit)}
        if subscription_id is not None:
            where.append("subscription_id = :sub")
            params["sub"] = subscription_id  # type: ignore[assignment]
        if status is not None:
            where.append("status = :status")
            params["status"] = status  # type: ignore[assignment]
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self.db.fetch_all(
            f"SELECT {_DELIVERY_COLS} FROM {self.deliveries_table}{clause} "
            "ORDER BY created_at DESC, id LIMIT :n", params)
        return [Delivery(**dict(r)) for r in rows]

    async def retry_delivery(self, delivery_id: str) -> None:
        """Send a delivery again now, with a fresh retry schedule (any status)."""
        await self._migrated()
        changed = await self.db.execute(
            f"UPDATE {self.deliveries_table} SET status = 'pending', attempts = 0, "
            "next_attempt_at = :now, lease_until = 0 WHERE id = :id",
            {"id": delivery_id, "now": self.clock()})
        if changed == 0:
            raise WebhookNotFoundError(f"no webhook delivery {delivery_id!r}", id=delivery_id)
        if self.autostart:
            self.ensure_worker()

    async def drain(self, timeout: float = 10) -> bool:
        """Wait until no delivery is due or in flight on this loop; ``False`` on timeout."""
        self.ensure_worker()
        state = self._state()
        deadline = time.monotonic() + timeout
        while True:
            if state.inflight == 0 and await self._due_count() == 0:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            state.idle.clear()
            state.wake.set()
            try:
                await asyncio.wait_for(state.idle.wait(), min(left, 0.05))
            except TimeoutError:
                pass

    async def _due_count(self) -> int:
        await self._migrated()
        return int(await self.db.fetch_val(
            f"SELECT COUNT(*) FROM {self.deliveries_table} WHERE status = 'pending' AND "
            "next_attempt_at <= :now", {"now": self.clock()}) or 0)

    # -- the worker --------------------------------------------------------------------------

    async def _worker(self, state: _LoopState) -> None:
        failures = 0
        while True:
            state.wake.clear()
            try:
                done = await self.step()
                if failures:
                    self._log.info("webhook: the outbox is reachable again; deliveries resume")
                failures = 0
                self._outage = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                done = 0
                if failures == 1:
                    self._log.warning("webhook: delivery worker cannot read the outbox: {}", exc)
                self._outage = f"{type(exc).__name__}: {exc}"
            state.idle.set()
            if done and (done >= self.config.workers * _BATCH or state.wake.is_set()):
                continue  # a full batch, or rows published meanwhile: claim again at once
            wait = min(30.0, 0.25 * 2 ** failures) if failures else _POLL
            try:
                await asyncio.wait_for(state.wake.wait(), wait)
            except TimeoutError:
                continue
            # woken by a publish: let a burst gather so one claim takes several rows
            await asyncio.sleep(_COALESCE)

    async def step(self, limit: int | None = None) -> int:
        """Claim the due deliveries (up to ``limit``, default ``8 * workers``) and attempt
        them, ``workers`` at a time; the number attempted. The worker calls it in a loop; tests
        call it directly with an injected clock to walk a retry schedule.

        The lease covers every round of the batch (``ceil(n / workers)`` attempts of at most
        ``connect_timeout + timeout`` each, plus a margin), so no other process takes a
        claimed delivery while this one may still attempt it. Successful deliveries are
        marked in one statement per batch."""
        await self._migrated()
        cfg = self.config
        workers = cfg.workers
        n = limit or workers * _BATCH
        now = self.clock()
        lease = now + -(-n // workers) * (cfg.timeout + cfg.connect_timeout) + _LEASE_MARGIN
        d = self.deliveries_table
        lock = " FOR UPDATE SKIP LOCKED" if self.db.dialect == "postgresql" else ""
        rows = await self.db.fetch_all(
            f"UPDATE {d} SET lease_until = :lease, attempts = attempts + 1 WHERE id IN "
            f"(SELECT id FROM {d} WHERE status = 'pending' AND next_attempt_at <= :now AND "
            f"lease_until <= :now ORDER BY next_attempt_at, id LIMIT :n{lock}) "
            "RETURNING id, msg_id, subscription_id, event_type, body, attempts, trace_headers, "
            + ", ".join(f"(SELECT s.{c} FROM {self.subs_table} s WHERE s.id = "
                        f"{d}.subscription_id) AS sub_{c}" for c in _SUB_COLS),
            {"lease": lease, "now": now, "n": n})
        if not rows:
            return 0
        state = self._state()
        subs: dict[str, Mapping[str, Any] | None] = {}
        for r in rows:  # the subscription's row, read by the claim itself
            sid = r["subscription_id"]
            if sid not in subs:
                subs[sid] = None if r["sub_id"] is None else \
                    {c: r[f"sub_{c}"] for c in _SUB_COLS}
        state.inflight += len(rows)
        delivered: list[tuple[str, int, str]] = []
        started: set[str] = set()
        gate = asyncio.Semaphore(workers)

        async def gated(row: Mapping[str, Any]) -> None:
            async with gate:
                started.add(row["id"])
                await self._attempt(state, row, subs[row["subscription_id"]], delivered)

        try:
            await asyncio.gather(*(gated(r) for r in rows))
        except asyncio.CancelledError:
            # stopped (aclose): successes are still marked below; the rest are released at
            # once instead of waiting out the lease, and a never-started one is not counted
            await self._release([r["id"] for r in rows], started, lease)
            raise
        finally:
            try:
                await self._mark_delivered(delivered, subs)
            finally:
                state.inflight -= len(rows)
        return len(rows)

    async def _release(self, ids: list[str], started: set[str], lease: float) -> None:
        d = self.deliveries_table
        for group, undo in (([i for i in ids if i not in started], 1),
                            ([i for i in ids if i in started], 0)):
            if not group:
                continue
            names = {f"i{k}": i for k, i in enumerate(group)}
            try:
                await self.db.execute(
                    f"UPDATE {d} SET lease_until = 0, attempts = attempts - {undo} WHERE "
                    f"status = 'pending' AND lease_until = :lease AND id IN "
                    f"({', '.join(':' + n for n in names)})", {"lease": lease, **names})
            except Exception as exc:  # the lease expires by itself
                self._log.warning("webhook: could not release claimed deliveries: {}", exc)

    async def _mark_delivered(self, delivered: list[tuple[str, int, str]],
                              subs: Mapping[str, Mapping[str, Any] | None]) -> None:
        by_code: dict[int, list[str]] = {}
        for did, code, _ in delivered:
            by_code.setdefault(code, []).append(did)
        for code, ids in by_code.items():
            names = [f"i{k}" for k in range(len(ids))]
            await self.db.execute(
                f"UPDATE {self.deliveries_table} SET status = 'delivered', last_status_code = "
                ":code, last_error = NULL, next_attempt_at = NULL, lease_until = 0 WHERE id IN "
                f"({', '.join(':' + n for n in names)})",
                {"code": code, **dict(zip(names, ids, strict=True))})
        for sid in {sid for _, _, sid in delivered}:
            sub = subs.get(sid)
            if sub is not None and sub["failures"]:
                await self.db.execute(f"UPDATE {self.subs_table} SET failures = 0 WHERE id = :id",
                                      {"id": sid})

    def _delay(self, attempts: int, retry_after: float | None) -> float | None:
        schedule = self.config.retry_schedule
        if attempts > len(schedule):
            return None
        if retry_after is not None:
            return float(min(retry_after, self.config.max_retry_after))
        base = schedule[attempts - 1]
        j = self.config.jitter
        return float(base * (1 + self.rng.uniform(-j, j)) if j else base)

    async def _attempt(self, state: _LoopState, row: Mapping[str, Any],
                       sub: Mapping[str, Any] | None,
                       delivered: list[tuple[str, int, str]]) -> None:
        t0 = time.perf_counter()
        if sub is None or not sub["active"]:
            why = "subscription removed" if sub is None else "subscription disabled"
            await self._finish(row, sub, "failed", None, why, None, outcome="failed")
            return
        try:
            target = await vet(sub["url"], self.policy, resolver=self.resolver)
        except WebhookTargetError as exc:
            self._inc("webhook_delivery_attempts_total", 1, {"status_class": "error"})
            if exc.reason == "unresolvable":
                await self._retry(row, sub, None, f"unresolvable: {exc}", None)
            else:
                await self._finish(row, sub, "failed", None, f"refused ({exc.reason}): {exc}",
                                   None, outcome="refused")
            return
        body = row["body"].encode()
        headers = self._signer(sub["secrets"]).headers(row["msg_id"], int(self.clock()), body)
        headers["content-type"] = "application/json"
        headers["user-agent"] = self.config.user_agent
        headers["host"] = target.host_header
        code: int | None = None
        error: str | None = None
        retry_after: float | None = None
        stored = json.loads(row["trace_headers"]) if row["trace_headers"] else {}
        tracer = self._tracer
        if tracer is not None:  # a CLIENT span per attempt, child of the publisher's span
            with tracer.span("webhook.deliver", kind="client", headers=stored, attributes={
                    "webhook.event_type": row["event_type"], "webhook.id": row["msg_id"],
                    "webhook.attempt": int(row["attempts"]), "server.address": target.host}) as span:
                tracer.inject(headers)
                code, retry_after, error = await self._send(state, target, headers, body)
                if code is not None:
                    span.set_attribute("http.response.status_code", code)
        else:
            headers.update(stored)
            code, retry_after, error = await self._send(state, target, headers, body)
        self._hist("webhook_delivery_duration_seconds", time.perf_counter() - t0)
        self._inc("webhook_delivery_attempts_total", 1, {"status_class": _status_class(code)})
        if code is not None and 200 <= code < 300:
            self._inc("webhook_deliveries_total", 1, {"outcome": "delivered"})
            delivered.append((row["id"], code, sub["id"]))  # marked in one statement per step
        elif code is None or code in (408, 429) or code >= 500:
            await self._retry(row, sub, code, error, retry_after)
        elif code == 410:
            await self._finish(row, sub, "failed", code, error, None, outcome="failed")
            await self._disable(sub, "the endpoint answered 410 Gone")
        else:
            reason: str | None = f"redirects are not followed ({error})" if 300 <= code < 400 \
                else error
            await self._finish(row, sub, "failed", code, reason, None, outcome="failed")

    def _signer(self, secrets_json: str) -> Signer:
        """The :class:`Signer` for a subscription's stored secrets that are valid now.

        Parsed secrets and HMAC key state are cached per (stored secrets, valid subset), so an
        attempt neither re-decodes the JSON nor re-derives the keys; expiry is still checked
        against the clock at every attempt."""
        cache = self.__dict__.setdefault("_signers", {})
        parsed = cache.get(secrets_json)
        if parsed is None:
            if len(cache) > 1024:
                cache.clear()
            parsed = cache[secrets_json] = ([(s, exp) for s, exp in json.loads(secrets_json)], {})
        pairs, signers = parsed
        now = self.clock()
        valid = tuple(s for s, exp in pairs if exp is None or exp > now)
        signer = signers.get(valid)
        if signer is None:
            signer = signers[valid] = Signer(valid)
        return signer

    async def _send(self, state: _LoopState, target: Any, headers: dict[str, str], body: bytes
                    ) -> tuple[int | None, float | None, str | None]:
        import httpx

        client = self._client(state)
        request = client.build_request("POST", target.pinned_url, headers=headers, content=body,
                                       extensions=target.extensions())
        try:
            response = await client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            return None, None, f"timeout: {type(exc).__name__}"
        except httpx.HTTPError as exc:
            return None, None, f"{type(exc).__name__}: {exc}"
        try:
            limit = self.config.max_response_bytes
            chunks: list[bytes] = []
            size = 0
            try:
                async for chunk in response.aiter_raw():
                    if size >= limit:
                        break
                    chunks.append(chunk[:limit - size])
                    size += len(chunks[-1])
            except httpx.StreamConsumed:  # a transport that answered with a read body
                chunks = [response.content[:limit]]
            except httpx.HTTPError:
                pass
            text = b"".join(chunks).decode("utf-8", "replace")
        finally:
            await response.aclose()
        code = response.status_code
        retry_after = parse_retry_after(response.headers.get("retry-after"), self.clock())
        error = None if 200 <= code < 300 else f"HTTP {code}" + (f": {text[:500]}" if text else "")
        return code, retry_after, error

    async def _retry(self, row: Mapping[str, Any], sub: Mapping[str, Any], code: int | None,
                     error: str | None, retry_after: float | None) -> None:
        delay = self._delay(int(row["attempts"]), retry_after)
        if delay is None:
            await self._finish(row, sub, "dead", code, error, None, outcome="failed")
            return
        await self._finish(row, sub, "pending", code, error, self.clock() + delay,
                           outcome="retry_scheduled")

    async def _finish(self, row: Mapping[str, Any], sub: Mapping[str, Any] | None, status: str,
                      code: int | None, error: str | None, next_at: float | None, *,
                      outcome: str) -> None:
        self._inc("webhook_deliveries_total", 1, {"outcome": outcome})
        await self.db.execute(
            f"UPDATE {self.deliveries_table} SET status = :status, last_status_code = :code, "
            "last_error = :error, next_attempt_at = :next, lease_until = 0 WHERE id = :id",
            {"status": status, "code": code, "error": error, "next": next_at, "id": row["id"]})
        if sub is None:
            return
        if status == "delivered" and sub["failures"]:
            await self.db.execute(f"UPDATE {self.subs_table} SET failures = 0 WHERE id = :id",
                                  {"id": sub["id"]})
        elif status == "dead":
            failures = await self.db.fetch_val(
                f"UPDATE {self.subs_table} SET failures = failures + 1 WHERE id = :id "
                "RETURNING failures", {"id": sub["id"]})
            limit = self.config.disable_after_failed_deliveries
            if failures is not None and failures >= limit:
                await self._disable(sub, f"{failures} consecutive deliveries exhausted their "
                                         "retries")

    async def _disable(self, sub: Mapping[str, Any], reason: str) -> None:
        changed = await self.db.execute(
            f"UPDATE {self.subs_table} SET active = 0 WHERE id = :id AND active = 1",
            {"id": sub["id"]})
        if not changed:
            return
        self._log.warning("webhook: subscription {} disabled: {}", sub["id"], reason)
        node = self._node
        if self._event_bus and node is not None:
            try:
                await node.event_bus.publish(DISABLED_EVENT, {
                    "subscription_id": sub["id"], "url": sub["url"], "reason": reason})
            except Exception as exc:  # the disable stands; the event is best effort
                self._log.warning("webhook: cannot publish {}: {}", DISABLED_EVENT, exc)

    # -- incoming ----------------------------------------------------------------------------

    def _secrets_for(self, secret: str | Sequence[str] | None) -> list[str] | None:
        if secret is None:
            if self._incoming_secret is None:
                raise ConfigurationError(
                    f"webhook: verify() needs the sender's secret: pass secret='whsec_…' or set "
                    f"the environment variable {SECRET_ENV}", capability="webhook")
            return None
        return [secret] if isinstance(secret, str) else list(secret)

    def _count_verify(self, outcome: str) -> None:
        bound = self._verify_counters.get(outcome)
        if bound is None:
            m = self._metrics
            bound = m.bind_counter("webhook_verifications_total", {"outcome": outcome}) \
                if m is not None and hasattr(m, "bind_counter") else _no_metric
            self._verify_counters[outcome] = bound
        bound(1)

    def verify(self, body: bytes | str, headers: Mapping[str, str],
               secret: str | Sequence[str] | None = None) -> Any:
        """Verify an incoming request; its parsed JSON body.

        Checks the headers, the timestamp (±``verify_tolerance``), the signature(s) (any
        ``v1,`` one matching any secret, ``hmac.compare_digest``) and, after a valid
        signature, that the id was not accepted within ``replay_window``.

        ``replay_store: database`` needs the async :meth:`averify`.

        Raises:
            WebhookVerificationError: ``missing_headers``, ``expired``, ``future``,
                ``bad_signature``, ``replayed`` or ``malformed``.
        """
        store = self.config.replay_store
        if store == "database":
            raise ConfigurationError(
                "webhook: replay_store 'database' is asynchronous: use "
                "'await node.webhooks.averify(body, headers)' (or replay_store memory/redis)",
                capability="webhook")
        secrets = self._secrets_for(secret)
        try:
            if store == "memory":
                payload = self._verifier.verify(body, headers, secrets)
            else:
                msg_id, _, raw = self._verifier.check(
                    body, headers, Verifier.keys(secrets))
                payload = Verifier.parse(raw)
                if not self._redis_add_sync(msg_id):
                    raise self._replayed(msg_id)
        except WebhookVerificationError as exc:
            self._count_verify(exc.reason)
            raise
        self._count_verify("accepted")
        return payload

    async def averify(self, body: bytes | str, headers: Mapping[str, str],
                      secret: str | Sequence[str] | None = None) -> Any:
        """:meth:`verify` for every replay store (``database`` and ``redis`` asynchronously)."""
        store = self.config.replay_store
        if store == "memory":
            return self.verify(body, headers, secret)
        secrets = self._secrets_for(secret)
        try:
            msg_id, now, raw = self._verifier.check(
                body, headers, Verifier.keys(secrets))
            payload = Verifier.parse(raw)
            fresh = await (self._db_add(msg_id, now) if store == "database"
                           else self._redis_add(msg_id))
            if not fresh:
                raise self._replayed(msg_id)
        except WebhookVerificationError as exc:
            self._count_verify(exc.reason)
            raise
        self._count_verify("accepted")
        return payload

    def _replayed(self, msg_id: str) -> WebhookVerificationError:
        return WebhookVerificationError(f"webhook-id {msg_id!r} was already accepted within the "
                                        f"last {self.config.replay_window:g} s", reason="replayed")

    def _redis_key(self, msg_id: str) -> str:
        return f"{self.config.namespace}:webhook:seen:{msg_id}"

    def _redis_add_sync(self, msg_id: str) -> bool:
        if self._redis_sync is None:
            import redis

            self._redis_sync = redis.Redis.from_url(self._redis_url)
        px = max(1, int(self.config.replay_window * 1000))
        return bool(self._redis_sync.set(self._redis_key(msg_id), b"1", nx=True, px=px))

    async def _redis_add(self, msg_id: str) -> bool:
        key = id(asyncio.get_running_loop())
        client = self._redis_async.get(key)
        if client is None:
            import redis.asyncio

            client = self._redis_async[key] = redis.asyncio.Redis.from_url(self._redis_url)
        px = max(1, int(self.config.replay_window * 1000))
        return bool(await client.set(self._redis_key(msg_id), b"1", nx=True, px=px))

    async def _db_add(self, msg_id: str, now: float) -> bool:
        await self._migrated()
        await self.db.execute(f"DELETE FROM {self.replay_table} WHERE expires_at <= :now",
                              {"now": now})
        try:
            await self.db.execute(f"INSERT INTO {self.replay_table} (id, expires_at) VALUES "
                                  "(:id, :exp)", {"id": msg_id, "exp": now + self.config.replay_window})
        except DatabaseIntegrityError:
            return False
        return True

    def asgi_receiver(self, handler: Callable[..., Any], path: str = "/",
                      secret: str | Sequence[str] | None = None) -> Callable[..., Awaitable[None]]:
        """A minimal ASGI app receiving webhooks at ``path`` (no framework needed).

        A verified POST calls ``handler(payload)`` (sync or async) under the request's
        ``traceparent`` (tracing composed) and ``credentials`` from its ``authorization``
        header (authentication composed), and answers 204. A verification failure answers
        401 (400 for ``missing_headers`` / ``malformed``), a handler exception 500 so that the
        sender retries; another path 404, another method 405, a body over
        ``max_payload_bytes`` 413.
        """
        from onex_compose.capabilities.webhook._receiver import Receiver

        receiver: Callable[..., Awaitable[None]] = Receiver(self, handler, path, secret)
        return receiver

    # -- health ------------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        """The pending backlog and the oldest due delivery's age (over ``health_max_age`` →
        degraded); the outbox unreachable → unhealthy."""
        now = self.clock()
        try:
            await self._migrated()
            row = await self.db.fetch_one(
                f"SELECT COUNT(*) AS pending, MIN(CASE WHEN next_attempt_at <= :now THEN "
                f"next_attempt_at END) AS oldest FROM {self.deliveries_table} WHERE status = "
                "'pending'", {"now": now})
        except Exception as exc:
            return {"status": "unhealthy", "reason": f"the outbox is unreachable ({exc})"}
        pending = int(row["pending"] or 0) if row else 0
        self._gauge("webhook_pending_deliveries", pending)
        oldest = row["oldest"] if row else None
        age = max(0.0, now - oldest) if oldest is not None else 0.0
        out: dict[str, Any] = {"status": "healthy", "pending": pending,
                               "oldest_due_age": round(age, 3)}
        if age > self.config.health_max_age:
            out["status"] = "degraded"
            out["reason"] = (f"the oldest due delivery has waited {age:.0f} s (health_max_age "
                             f"{self.config.health_max_age:g} s)")
        elif self._outage:
            out["status"] = "degraded"
            out["reason"] = f"the delivery worker cannot read the outbox ({self._outage})"
        return out


__all__ = ["DISABLED_EVENT", "OWNER", "SECRET_ENV", "Webhooks", "check_url", "parse_retry_after"]
_ = WebhookError  # re-exported by the package
