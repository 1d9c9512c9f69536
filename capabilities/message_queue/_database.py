"""The ``database`` backend of message_queue: rows in the node's database (SQLite or PostgreSQL).

Tables (created by migrations registered through ``db.register_migrations``):

* ``<ns>_mq_messages(seq, id, queue, key, payload, headers, enqueued_at, available_at,
  delivery_count, receipt, locked_until, last_error, acked_at)``: one row per live message.
  ``seq`` (auto-increment) is the enqueue order.
* ``<ns>_mq_dead(id, queue, key, payload, headers, enqueued_at, delivery_count, reason,
  last_error, dead_at)``: dead letters.
* ``<ns>_mq_dedup(queue, idempotency_key, id, expires_at)``: producer idempotency keys, kept for
  ``dedup_window`` seconds. A table of their own (rather than a unique column on the messages)
  so that a key is remembered for the whole window even after its message was acked and
  deleted.

On PostgreSQL an enqueue also sends ``NOTIFY`` on a channel of the namespace (delivered at
commit) and idle receivers ``LISTEN`` on a connection of their loop, so a waiting consumer
wakes at once instead of at its next ``poll_interval``; SQLite receivers poll.

Receiving selects the ready rows in ``seq`` order and stamps them with a fresh receipt and
``locked_until`` in one transaction: PostgreSQL ``SELECT ... FOR UPDATE SKIP LOCKED`` (concurrent
consumers never wait for each other nor take the same row), SQLite ``BEGIN IMMEDIATE`` (the
database capability opens file transactions that way; the memory database serialises its
transactions per loop). With ``ordering: key`` a keyed row is deliverable only when it is the
oldest live row of its key, so a key's messages come out in order and never two at once.

SQLAlchemy is imported only by the database capability when a statement runs, never here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from onex_compose.capabilities.message_queue._model import (
    MessageQueueConfig,
    QueueStats,
    QueueUnavailableError,
    StaleReceiptError,
)

__all__ = ["DatabaseBackend", "RawMessage"]

OWNER = "message_queue"
_CLEANUP_EVERY = 30.0
_CHUNK = 400

RawMessage = dict[str, Any]


def _migrations(ns: str) -> list[Any]:
    from onex_compose.capabilities.database import Migration

    m, d, k = f"{ns}_mq_messages", f"{ns}_mq_dead", f"{ns}_mq_dedup"

    def tables(seq: str, blob: str) -> list[str]:
        return [
            f"CREATE TABLE IF NOT EXISTS {m} (seq {seq}, id VARCHAR(40) NOT NULL UNIQUE, "
            "queue VARCHAR(100) NOT NULL, key VARCHAR(500), "
            f"payload {blob} NOT NULL, headers TEXT, enqueued_at DOUBLE PRECISION NOT NULL, "
            "available_at DOUBLE PRECISION NOT NULL, delivery_count INTEGER NOT NULL DEFAULT 0, "
            "receipt VARCHAR(40), locked_until DOUBLE PRECISION, last_error TEXT, "
            "acked_at DOUBLE PRECISION)",
            f"CREATE INDEX IF NOT EXISTS {m}_ready ON {m} (queue, available_at)",
            f"CREATE INDEX IF NOT EXISTS {m}_key ON {m} (queue, key, seq)",
            f"CREATE TABLE IF NOT EXISTS {d} (id VARCHAR(40) PRIMARY KEY, "
            f"queue VARCHAR(100) NOT NULL, key VARCHAR(500), payload {blob} NOT NULL, "
            "headers TEXT, enqueued_at DOUBLE PRECISION NOT NULL, "
            "delivery_count INTEGER NOT NULL, reason VARCHAR(200) NOT NULL, last_error TEXT, "
            "dead_at DOUBLE PRECISION NOT NULL)",
            f"CREATE INDEX IF NOT EXISTS {d}_queue ON {d} (queue, dead_at)",
            f"CREATE TABLE IF NOT EXISTS {k} (queue VARCHAR(100) NOT NULL, "
            "idempotency_key VARCHAR(500) NOT NULL, id VARCHAR(40) NOT NULL, "
            "expires_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (queue, idempotency_key))",
        ]

    return [Migration("001_message_queue", {
        "sqlite": tables("INTEGER PRIMARY KEY AUTOINCREMENT", "BLOB"),
        "postgresql": tables("BIGSERIAL PRIMARY KEY", "BYTEA"),
    })]


def _unavailable(exc: BaseException) -> bool:
    from onex_compose.capabilities.database import DatabaseUnavailableError, PoolExhaustedError

    return isinstance(exc, DatabaseUnavailableError | PoolExhaustedError)


class DatabaseBackend:
    """Messages as rows of the node's database (``node.db``)."""

    name = "database"
    supports_idempotency = True

    def __init__(self, config: MessageQueueConfig, db: Any, clock: Any = time.time) -> None:
        self.config = config
        self.db = db
        self.clock = clock
        ns = config.namespace
        self.messages = f"{ns}_mq_messages"
        self.dead = f"{ns}_mq_dead"
        self.dedup = f"{ns}_mq_dedup"
        db.register_migrations(f"{OWNER}:{ns}", _migrations(ns))
        self._owner = f"{OWNER}:{ns}"
        self._last_cleanup = 0.0
        self._listeners: dict[asyncio.AbstractEventLoop, _Listener] = {}

    @property
    def channel(self) -> str:
        """The PostgreSQL NOTIFY channel of this namespace (and schema)."""
        schema = getattr(self.db.config, "schema_name", None) or ""
        digest = hashlib.sha256(f"{schema}/{self.config.namespace}".encode()).hexdigest()[:20]
        return f"onex_mq_{digest}"

    def __repr__(self) -> str:
        return f"<DatabaseBackend {self.db.dialect} tables={self.messages},{self.dead}>"

    @property
    def describe(self) -> str:
        return f"database ({self.db.dialect})"

    async def _ready(self) -> None:
        await self.db.ensure_migrated(self._owner)

    async def _call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)``; a database outage becomes :class:`QueueUnavailableError`."""
        try:
            await self._ready()
            return await fn(*args)
        except Exception as exc:
            if _unavailable(exc):
                raise QueueUnavailableError(
                    f"message_queue: the database is unavailable ({exc})") from exc
            raise

    # -- enqueue ---------------------------------------------------------------------------------

    async def enqueue(self, queue: str, items: Sequence[Mapping[str, Any]]) -> list[str]:
        """Insert ``items`` (``id, payload, key, headers, delay, idempotency_key``); the ids
        (the original id for an idempotency key seen within the window)."""
        return list(await self._call(self._enqueue, queue, items))

    async def _enqueue(self, queue: str, items: Sequence[Mapping[str, Any]]) -> list[str]:
        from onex_compose.capabilities.database import DatabaseIntegrityError

        for attempt in range(3):
            try:
                async with self.db.transaction() as tx:
                    return await self._insert(tx, queue, items)
            except DatabaseIntegrityError:
                if attempt == 2:  # another producer kept winning the same idempotency key
                    raise
        raise AssertionError("unreachable")

    async def _insert(self, tx: Any, queue: str, items: Sequence[Mapping[str, Any]]
                      ) -> list[str]:
        now = self.clock()
        ids: list[str] = []
        rows: list[Mapping[str, Any]] = []
        for item in items:
            ikey = item.get("idempotency_key")
            if ikey is not None:
                found = await tx.fetch_one(
                    f"SELECT id, expires_at FROM {self.dedup} WHERE queue = :q AND "
                    "idempotency_key = :k", {"q": queue, "k": ikey})
                if found is not None and found["expires_at"] > now:
                    ids.append(found["id"])
                    continue
                if found is not None:
                    await tx.execute(f"DELETE FROM {self.dedup} WHERE queue = :q AND "
                                     "idempotency_key = :k", {"q": queue, "k": ikey})
                await tx.execute(
                    f"INSERT INTO {self.dedup} (queue, idempotency_key, id, expires_at) "
                    "VALUES (:q, :k, :i, :e)",
                    {"q": queue, "k": ikey, "i": item["id"],
                     "e": now + self.config.dedup_window})
            ids.append(item["id"])
            rows.append(item)
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start:start + _CHUNK]
            values = []
            params: dict[str, Any] = {"q": queue, "now": now}
            for n, item in enumerate(chunk):
                values.append(f"(:i{n}, :q, :k{n}, :p{n}, :h{n}, :now, :a{n}, 0)")
                params[f"i{n}"] = item["id"]
                params[f"k{n}"] = item.get("key")
                params[f"p{n}"] = item["payload"]
                headers = item.get("headers")
                params[f"h{n}"] = json.dumps(headers) if headers else None
                params[f"a{n}"] = now + float(item.get("delay") or 0.0)
            await tx.execute(
                f"INSERT INTO {self.messages} (id, queue, key, payload, headers, enqueued_at, "
                f"available_at, delivery_count) VALUES {', '.join(values)}", params)
        if rows and self.db.dialect == "postgresql":  # delivered at commit: wakes consumers
            await tx.execute("SELECT pg_notify(:c, :q)", {"c": self.channel, "q": queue})
        return ids

    # -- receive ---------------------------------------------------------------------------------

    async def receive(self, queue: str, max_messages: int, visibility: float
                      ) -> tuple[list[RawMessage], list[RawMessage]]:
        """Take up to ``max_messages`` ready messages for ``visibility`` seconds.

        Returns ``(delivered, dead)``: the deliveries, and the messages dead-lettered instead
        because another delivery would exceed ``max_deliveries``.
        """
        result: tuple[list[RawMessage], list[RawMessage]] = await self._call(
            self._receive, queue, max_messages, visibility)
        return result

    async def _receive(self, queue: str, max_messages: int, visibility: float
                       ) -> tuple[list[RawMessage], list[RawMessage]]:
        now = self.clock()
        if now - self._last_cleanup > _CLEANUP_EVERY:
            self._last_cleanup = now
            await self._cleanup(now)
        m = self.messages
        where = ("m.queue = :q AND m.acked_at IS NULL AND m.available_at <= :now AND "
                 "(m.locked_until IS NULL OR m.locked_until <= :now)")
        if self.config.ordering == "key":
            where += (f" AND (m.key IS NULL OR m.seq = (SELECT MIN(m2.seq) FROM {m} m2 WHERE "
                      "m2.queue = m.queue AND m2.key = m.key AND m2.acked_at IS NULL))")
        lock = " FOR UPDATE OF m SKIP LOCKED" if self.db.dialect == "postgresql" else ""
        sql = (f"SELECT m.seq, m.id, m.key, m.payload, m.headers, m.enqueued_at, "
               f"m.delivery_count, m.last_error FROM {m} m WHERE {where} ORDER BY m.seq "
               f"LIMIT :n{lock}")
        receipt = uuid.uuid4().hex
        delivered: list[RawMessage] = []
        dead: list[RawMessage] = []
        async with self.db.transaction() as tx:
            rows = await tx.fetch_all(sql, {"q": queue, "now": now, "n": max_messages})
            if not rows:
                return delivered, dead
            take: list[int] = []
            for row in rows:
                raw = dict(row)
                raw["headers"] = json.loads(raw["headers"]) if raw["headers"] else {}
                raw["payload"] = bytes(raw["payload"])
                if raw["delivery_count"] >= self.config.max_deliveries:
                    await self._bury(tx, raw, "max_deliveries", raw["last_error"], now)
                    dead.append(raw)
                    continue
                raw["delivery_count"] += 1
                raw["receipt"] = receipt
                take.append(raw["seq"])
                delivered.append(raw)
            if take:
                marks = ", ".join(f":s{n}" for n in range(len(take)))
                params: dict[str, Any] = {f"s{n}": s for n, s in enumerate(take)}
                params.update(r=receipt, lu=now + visibility)
                await tx.execute(
                    f"UPDATE {m} SET delivery_count = delivery_count + 1, receipt = :r, "
                    f"locked_until = :lu WHERE seq IN ({marks})", params)
        return delivered, dead

    async def _bury(self, tx: Any, raw: Mapping[str, Any], reason: str, last_error: str | None,
                    now: float) -> None:
        await tx.execute(
            f"INSERT INTO {self.dead} (id, queue, key, payload, headers, enqueued_at, "
            "delivery_count, reason, last_error, dead_at) SELECT id, queue, key, payload, "
            f"headers, enqueued_at, delivery_count, :reason, :err, :now FROM {self.messages} "
            "WHERE seq = :s",
            {"reason": reason, "err": last_error, "now": now, "s": raw["seq"]})
        await tx.execute(f"DELETE FROM {self.messages} WHERE seq = :s", {"s": raw["seq"]})

    async def _cleanup(self, now: float) -> None:
        async with self.db.transaction() as tx:
            await tx.execute(f"DELETE FROM {self.dedup} WHERE expires_at <= :now", {"now": now})
            if self.config.keep_acked > 0:
                await tx.execute(f"DELETE FROM {self.messages} WHERE acked_at IS NOT NULL AND "
                                 "acked_at <= :t", {"t": now - self.config.keep_acked})

    # -- settle ----------------------------------------------------------------------------------

    def _stale(self, queue: str, mid: str, what: str) -> StaleReceiptError:
        return StaleReceiptError(
            f"cannot {what} message {mid} of queue {queue!r}: its receipt is stale (the "
            "visibility timeout lapsed and it was delivered again, or it was already settled); "
            "it may have been processed twice")

    async def ack(self, queue: str, mid: str, receipt: str) -> None:
        """Delete (or, with ``keep_acked``, mark) the message of this delivery."""
        await self._call(self._ack, queue, mid, receipt)

    async def _ack(self, queue: str, mid: str, receipt: str) -> None:
        if self.config.keep_acked > 0:
            n = await self.db.execute(
                f"UPDATE {self.messages} SET acked_at = :now, locked_until = NULL WHERE id = :i "
                "AND receipt = :r AND acked_at IS NULL",
                {"now": self.clock(), "i": mid, "r": receipt})
        else:
            n = await self.db.execute(
                f"DELETE FROM {self.messages} WHERE id = :i AND receipt = :r",
                {"i": mid, "r": receipt})
        if n == 0:
            raise self._stale(queue, mid, "ack")

    async def nack(self, queue: str, mid: str, receipt: str, delay: float,
                   reason: str | None) -> None:
        """Make the message visible again after ``delay`` seconds."""
        await self._call(self._nack, queue, mid, receipt, delay, reason)

    async def _nack(self, queue: str, mid: str, receipt: str, delay: float,
                    reason: str | None) -> None:
        n = await self.db.execute(
            f"UPDATE {self.messages} SET receipt = NULL, locked_until = NULL, available_at = :a, "
            "last_error = :e WHERE id = :i AND receipt = :r AND acked_at IS NULL",
            {"a": self.clock() + delay, "e": reason, "i": mid, "r": receipt})
        if n == 0:
            raise self._stale(queue, mid, "nack")

    async def extend(self, queue: str, mid: str, receipt: str, seconds: float) -> None:
        """Keep the message invisible for ``seconds`` from now."""
        await self._call(self._extend, queue, mid, receipt, seconds)

    async def _extend(self, queue: str, mid: str, receipt: str, seconds: float) -> None:
        n = await self.db.execute(
            f"UPDATE {self.messages} SET locked_until = :lu WHERE id = :i AND receipt = :r AND "
            "acked_at IS NULL", {"lu": self.clock() + seconds, "i": mid, "r": receipt})
        if n == 0:
            raise self._stale(queue, mid, "extend")

    async def dead_letter(self, queue: str, mid: str, receipt: str, reason: str,
                          last_error: str | None) -> None:
        """Move the message of this delivery to the dead letters."""
        await self._call(self._dead_letter, queue, mid, receipt, reason, last_error)

    async def _dead_letter(self, queue: str, mid: str, receipt: str, reason: str,
                           last_error: str | None) -> None:
        async with self.db.transaction() as tx:
            row = await tx.fetch_one(
                f"SELECT seq, last_error FROM {self.messages} WHERE id = :i AND receipt = :r "
                "AND acked_at IS NULL", {"i": mid, "r": receipt})
            if row is None:
                raise self._stale(queue, mid, "dead-letter")
            await self._bury(tx, {"seq": row["seq"]}, reason,
                             last_error if last_error is not None else row["last_error"],
                             self.clock())

    # -- dead letters, admin ----------------------------------------------------------------------

    async def dead_letters(self, queue: str, limit: int) -> list[RawMessage]:
        rows = await self._call(
            self.db.fetch_all,
            f"SELECT id, key, payload, headers, enqueued_at, delivery_count, reason, last_error, "
            f"dead_at FROM {self.dead} WHERE queue = :q ORDER BY dead_at, id LIMIT :n",
            {"q": queue, "n": limit})
        out = []
        for row in rows:
            raw = dict(row)
            raw["headers"] = json.loads(raw["headers"]) if raw["headers"] else {}
            raw["payload"] = bytes(raw["payload"])
            out.append(raw)
        return out

    async def redrive(self, queue: str, ids: Sequence[str] | None) -> int:
        result: int = await self._call(self._redrive, queue, ids)
        return result

    async def _redrive(self, queue: str, ids: Sequence[str] | None) -> int:
        params: dict[str, Any] = {"q": queue, "now": self.clock()}
        where = "queue = :q"
        if ids is not None:
            if not ids:
                return 0
            where += f" AND id IN ({', '.join(f':i{n}' for n in range(len(ids)))})"
            params.update({f"i{n}": i for n, i in enumerate(ids)})
        async with self.db.transaction() as tx:
            await tx.execute(
                f"INSERT INTO {self.messages} (id, queue, key, payload, headers, enqueued_at, "
                "available_at, delivery_count) SELECT id, queue, key, payload, headers, "
                f"enqueued_at, :now, 0 FROM {self.dead} WHERE {where} ORDER BY dead_at, id",
                params)
            n: int = await tx.execute(f"DELETE FROM {self.dead} WHERE {where}",
                                      {k: v for k, v in params.items() if k != "now"})
        return n

    async def purge(self, queue: str) -> int:
        result: int = await self._call(self.db.execute,
                                       f"DELETE FROM {self.messages} WHERE queue = :q",
                                       {"q": queue})
        return result

    async def stats(self, queue: str) -> tuple[QueueStats, float | None]:
        """The queue's counts and the age of its oldest ready message (``None``: none)."""
        result: tuple[QueueStats, float | None] = await self._call(self._stats, queue)
        return result

    async def _stats(self, queue: str) -> tuple[QueueStats, float | None]:
        now = self.clock()
        row = await self.db.fetch_one(
            "SELECT "
            "SUM(CASE WHEN locked_until > :now THEN 1 ELSE 0 END) AS in_flight, "
            "SUM(CASE WHEN (locked_until IS NULL OR locked_until <= :now) AND available_at > :now "
            "THEN 1 ELSE 0 END) AS delayed, "
            "SUM(CASE WHEN (locked_until IS NULL OR locked_until <= :now) AND available_at <= :now "
            "THEN 1 ELSE 0 END) AS ready, "
            "MIN(CASE WHEN (locked_until IS NULL OR locked_until <= :now) AND available_at <= :now "
            f"THEN available_at END) AS oldest FROM {self.messages} WHERE queue = :q AND "
            "acked_at IS NULL", {"q": queue, "now": now})
        dead = await self.db.fetch_val(f"SELECT COUNT(*) FROM {self.dead} WHERE queue = :q",
                                       {"q": queue})
        assert row is not None
        oldest = row["oldest"]
        stats = QueueStats(ready=int(row["ready"] or 0), in_flight=int(row["in_flight"] or 0),
                           delayed=int(row["delayed"] or 0), dead=int(dead or 0))
        return stats, (None if oldest is None else max(0.0, now - float(oldest)))

    async def ping(self) -> None:
        await self._call(self.db.fetch_val, "SELECT 1")

    async def wait(self, queue: str, seconds: float) -> None:
        """Idle up to ``seconds`` before the next poll; on PostgreSQL a NOTIFY from an enqueue
        to ``queue`` (LISTEN on a connection of this loop) ends the wait early."""
        if self.db.dialect != "postgresql":
            await asyncio.sleep(seconds)
            return
        loop = asyncio.get_running_loop()
        listener = self._listeners.get(loop)
        if listener is None:
            listener = self._listeners[loop] = _Listener(self)
        await listener.wait(queue, seconds)

    async def aclose(self) -> None:
        """Close this loop's LISTEN connection; the database capability closes its engines."""
        with contextlib.suppress(RuntimeError):
            listener = self._listeners.pop(asyncio.get_running_loop(), None)
            if listener is not None:
                await listener.aclose()


class _Listener:
    """One loop's ``LISTEN`` connection (asyncpg, outside the pool): an enqueue's NOTIFY sets
    the event of its queue. When it cannot connect (or its connection dies) waits are plain
    sleeps, and it tries again at most every 5 s."""

    _RETRY = 5.0

    def __init__(self, backend: DatabaseBackend) -> None:
        self.backend = backend
        self.conn: Any = None
        self.events: dict[str, asyncio.Event] = {}
        self.failed_at = -1e9
        self.connecting: asyncio.Lock = asyncio.Lock()

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        event = self.events.get(payload)
        if event is not None:
            event.set()

    async def _connect(self) -> bool:
        if self.conn is not None and not self.conn.is_closed():
            return True
        if time.monotonic() - self.failed_at < self._RETRY:
            return False
        async with self.connecting:
            if self.conn is not None and not self.conn.is_closed():
                return True
            try:
                import asyncpg

                url = self.backend.db._resolved.url.replace("postgresql+asyncpg://",
                                                            "postgresql://", 1)
                conn = await asyncpg.connect(url, timeout=self.backend.db.config.connect_timeout)
                await conn.add_listener(self.backend.channel, self._notified)
            except Exception:
                self.failed_at = time.monotonic()
                self.conn = None
                return False
            self.conn = conn
            return True

    async def wait(self, queue: str, seconds: float) -> None:
        if not await self._connect():
            await asyncio.sleep(seconds)
            return
        event = self.events.get(queue)
        if event is None:
            event = self.events[queue] = asyncio.Event()
        event.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)

    async def aclose(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)
