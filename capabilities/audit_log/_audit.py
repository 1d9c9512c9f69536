"""The :class:`AuditLog` facility (``self.audit``): append, verify, query, anchors, export."""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import os
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from onex_compose._redact import Redactor
from onex_compose.capabilities import _context
from onex_compose.capabilities._log import logger
from onex_compose.capabilities.audit_log._chain import (
    COLUMNS,
    ChainVerifier,
    Hasher,
    export_header,
    export_line,
    record_body,
)
from onex_compose.capabilities.audit_log._model import (
    HMAC_KEY_ENV,
    OUTCOMES,
    Anchor,
    AuditLogConfig,
    AuditRecord,
    AuditWriteError,
    VerifyReport,
)
from onex_compose.exceptions import ConfigurationError

T = TypeVar("T")

OWNER = "audit_log"
REDACTED = "[REDACTED]"
ANCHOR_TOPIC = "audit.anchor"
_COLS = ", ".join(COLUMNS)
_PARAMS = ", ".join(f":{c}" for c in COLUMNS)
_DEGRADED = "degraded"


def _no_metric(*_: Any, **__: Any) -> None:
    return None


def utc_stamp(epoch: float) -> str:
    """``epoch`` seconds as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (UTC, microseconds).

    Example:
        >>> utc_stamp(0.5)
        '1970-01-01T00:00:00.500000Z'
    """
    micros = round(epoch * 1_000_000)
    seconds, micro = divmod(micros, 1_000_000)
    t = time.gmtime(seconds)
    return (f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:"
            f"{t.tm_sec:02d}.{micro:06d}Z")


def _stamp_of(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            raise ValueError(f"{name} must be timezone-aware (a naive datetime is ambiguous)")
        return utc_stamp(value.timestamp())
    if isinstance(value, int | float) and not isinstance(value, bool):
        return utc_stamp(float(value))
    if isinstance(value, str):
        return value
    raise TypeError(f"{name} must be a datetime, epoch seconds or an ISO string, got "
                    f"{type(value).__name__}")


def _migration_sql(ns: str) -> dict[str, list[str]]:
    t = f"{ns}_audit_log"
    a = f"{ns}_audit_anchors"
    columns = (
        "chain_id VARCHAR(200) NOT NULL, seq BIGINT NOT NULL, id VARCHAR(32) NOT NULL, "
        "at VARCHAR(32) NOT NULL, actor TEXT, actor_scheme VARCHAR(50), "
        "action VARCHAR(200) NOT NULL, resource TEXT, outcome VARCHAR(16) NOT NULL, "
        "reason TEXT, node_id TEXT, correlation_id TEXT, trace_id TEXT, details TEXT, "
        "prev_hash VARCHAR(64) NOT NULL, hash VARCHAR(64) NOT NULL, "
        "PRIMARY KEY (chain_id, seq)")
    anchors = (f"CREATE TABLE IF NOT EXISTS {a} (chain_id VARCHAR(200) NOT NULL, "
               "seq BIGINT NOT NULL, hash VARCHAR(64) NOT NULL, at VARCHAR(32) NOT NULL, "
               "kind VARCHAR(16) NOT NULL, PRIMARY KEY (chain_id, kind, seq))")
    sqlite = [
        f"CREATE TABLE IF NOT EXISTS {t} ({columns})",
        f"CREATE TABLE IF NOT EXISTS {t}_gate (open INTEGER NOT NULL)",
        f"CREATE TRIGGER IF NOT EXISTS {t}_no_update BEFORE UPDATE ON {t} BEGIN "
        f"SELECT RAISE(ABORT, 'the audit log {t} is append-only (UPDATE rejected)'); END",
        f"CREATE TRIGGER IF NOT EXISTS {t}_no_delete BEFORE DELETE ON {t} "
        f"WHEN NOT EXISTS (SELECT 1 FROM {t}_gate WHERE open = 1) BEGIN "
        f"SELECT RAISE(ABORT, 'the audit log {t} is append-only (DELETE rejected; use "
        f"archive())'); END",
        anchors,
    ]
    postgresql = [
        f"CREATE TABLE IF NOT EXISTS {t} ({columns})",
        f"CREATE OR REPLACE FUNCTION {t}_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN "
        "IF TG_OP = 'DELETE' AND current_setting('onex.audit_archive', true) = 'on' THEN "
        "RETURN OLD; END IF; "
        "RAISE EXCEPTION 'the audit log % is append-only (% rejected; use archive())', "
        "TG_TABLE_NAME, TG_OP USING ERRCODE = 'insufficient_privilege'; "
        "END $$",
        f"CREATE TRIGGER {t}_append_only BEFORE UPDATE OR DELETE ON {t} FOR EACH ROW "
        f"EXECUTE FUNCTION {t}_append_only()",
        f"CREATE TRIGGER {t}_no_truncate BEFORE TRUNCATE ON {t} FOR EACH STATEMENT "
        f"EXECUTE FUNCTION {t}_append_only()",
        anchors,
    ]
    return {"sqlite": sqlite, "postgresql": postgresql}


class _SyncRunner:
    """A private event loop in a daemon thread: the sync API's way into the async database."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="onex-audit-sync",
                                       daemon=True)
        self.thread.start()

    def run(self, coro_fn: Callable[[], Awaitable[T]]) -> T:
        if threading.current_thread() is self.thread:
            raise RuntimeError("record_sync() called from the audit log's own loop; use "
                               "await record()")

        async def main() -> T:
            return await coro_fn()

        return asyncio.run_coroutine_threadsafe(main(), self.loop).result()

    def stop(self, final: Callable[[], Awaitable[Any]] | None = None) -> None:
        if final is not None and self.loop.is_running():
            try:
                self.run(final)
            except Exception:
                logger.opt(exception=True).debug("audit_log: closing the sync loop's engines")
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        if not self.thread.is_alive():
            self.loop.close()


def _stop_runner(holder: dict[str, _SyncRunner]) -> None:
    runner = holder.pop("runner", None)
    if runner is not None:
        runner.loop.call_soon_threadsafe(runner.loop.stop)


class AuditLog:
    """The node's audit log (``self.audit``): a hash-chained, append-only record store.

    Args:
        config: an :class:`AuditLogConfig`.
        db: the node's ``Database`` (``self.db``).
        serializer: the node's ``Serializer`` (``canonical()`` of ``details`` and inputs).
        metrics: the node's metrics (``None``: not counted).
        node: the node (held weakly): ``node_id``, ``node.tracer``, ``node.log``,
            ``node.event_bus`` when those capabilities are composed.
        tracing / logging / event_bus: whether those capabilities are composed.
        clock: wall-clock epoch seconds for ``at`` (``time.time``).
        monotonic: the clock of the health state (``time.monotonic``).
        environ: where ``ONEX_AUDIT_HMAC_KEY`` is read (``os.environ``).

    Raises:
        ConfigurationError: ``require_hmac`` without a key, an unusable ``anchor_sink`` (a file
            outside a writable directory, or ``event_bus`` without the event_bus capability).
    """

    def __init__(self, config: AuditLogConfig, *, db: Any, serializer: Any, metrics: Any = None,
                 node: Any = None, tracing: bool = False, logging: bool = False,
                 event_bus: bool = False, clock: Callable[[], float] | None = None,
                 monotonic: Callable[[], float] | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.db = db
        self.serializer = serializer
        self.clock = clock or time.time
        self.monotonic = monotonic or time.monotonic
        self._node_ref: Any = weakref.ref(node) if node is not None else None
        self._tracing = tracing
        self._logging = logging
        self._event_bus = event_bus
        env = os.environ if environ is None else environ
        key = config.hmac_key.get_secret_value() if config.hmac_key is not None else \
            env.get(HMAC_KEY_ENV, "")
        if config.require_hmac and not key:
            raise ConfigurationError(
                f"audit_log: require_hmac is true but no HMAC key is configured: set "
                f"audit_log_config.hmac_key or the environment variable {HMAC_KEY_ENV}",
                capability="audit_log")
        self.hasher = Hasher(key.encode() if key else None)
        self.chain_id = config.chain_id
        self._redactor = Redactor(config.scrub_keys, exact=(), mask=REDACTED)
        self._sink = self._check_sink(config.anchor_sink)
        ns = db.config.namespace
        self.table = f"{ns}_audit_log"
        self.anchors_table = f"{ns}_audit_anchors"
        self.gate_table = f"{self.table}_gate"
        self._lock_key = f"{self.table}:{self.chain_id}"
        from onex_compose.capabilities.database import Migration

        db.register_migrations(OWNER, [Migration("001_audit_log", _migration_sql(ns))])
        self._head: tuple[int, str] | None = None
        self._write_failed_at: float | None = None
        self._write_failure: str | None = None
        self._runner: dict[str, _SyncRunner] = {}
        self._runner_lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _stop_runner, self._runner)
        m = metrics
        self._metrics = m
        self._counted: dict[str, Callable[..., Any]] = {}
        self._inc = m.increment if m is not None else _no_metric
        self._hist = m.histogram if m is not None else _no_metric
        self._action_path = config.action_from_input.split(".") if config.action_from_input \
            else None
        self._insert_sql = f"INSERT INTO {self.table} ({_COLS}) VALUES ({_PARAMS})"
        # the conditional insert: only while the record this process wrote last is still the
        # head (one statement instead of a head read and an insert; a mismatch reads the head)
        typed = _PARAMS.replace(":seq", "CAST(:seq AS BIGINT)", 1)
        self._insert_checked_sql = (
            f"INSERT INTO {self.table} ({_COLS}) SELECT {typed} WHERE "
            f"COALESCE((SELECT hash FROM {self.table} WHERE chain_id = :chain_key ORDER BY seq "
            f"DESC LIMIT 1), '') = :expect")

    # -- configuration helpers -------------------------------------------------------------

    def _check_sink(self, sink: str) -> str | Path:
        if sink == "log":
            return sink
        if sink == "event_bus":
            if not self._event_bus:
                raise ConfigurationError(
                    "audit_log: anchor_sink is 'event_bus' but the node has no event_bus "
                    "capability: compose it, or use anchor_sink 'log' or 'file:<path>'",
                    capability="audit_log")
            return sink
        path = Path(sink[5:]).expanduser()
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigurationError(
                f"audit_log: anchor_sink {sink!r}: the directory {str(parent)!r} does not exist "
                "or is not writable; name a file in a writable directory",
                capability="audit_log")
        if path.exists() and not os.access(path, os.W_OK):
            raise ConfigurationError(f"audit_log: anchor_sink {sink!r} is not writable",
                                     capability="audit_log")
        return path

    def __repr__(self) -> str:
        return (f"<AuditLog chain={self.chain_id!r} table={self.table} "
                f"{self.hasher.algorithm} sink={self.config.anchor_sink!r}>")

    def __reduce__(self) -> Any:
        raise TypeError("an AuditLog is rebuilt by its node's setup (nodes pickle by "
                        "configuration); it is not pickled on its own")

    @property
    def _node(self) -> Any:
        return self._node_ref() if self._node_ref is not None else None

    # -- building records --------------------------------------------------------------------

    def _actor(self, actor: Any) -> tuple[str | None, str | None]:
        if actor is None:
            principal = _context.principal.get()
            if principal is None:
                return None, None
            return principal.subject, principal.scheme
        if isinstance(actor, _context.Principal):
            return actor.subject, actor.scheme
        if isinstance(actor, str):
            return actor, None
        raise TypeError(f"actor must be a str, a Principal or None, got {type(actor).__name__}")

    def _trace_id(self) -> str | None:
        if not self._tracing:
            return None
        node = self._node
        try:
            value = node.tracer.current_trace_id() if node is not None else None
        except Exception:  # tracing must never break auditing
            return None
        return str(value) if value else None

    def _details_json(self, details: Mapping[str, Any] | None) -> str | None:
        if details is None:
            return None
        if not isinstance(details, Mapping):
            raise TypeError(f"details must be a mapping, got {type(details).__name__}")
        return bytes(self.serializer.canonical(self._redactor.value(details))).decode()

    def _prepare(self, action: str, *, outcome: str, resource: str | None = None,
                 reason: str | None = None, details: Mapping[str, Any] | None = None,
                 actor: Any = None) -> dict[str, Any]:
        if not isinstance(action, str) or not action:
            raise ValueError(f"action must be a non-empty string, got {action!r}")
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, got {outcome!r}")
        subject, scheme = self._actor(actor)
        node = self._node
        node_id = getattr(node, "node_id", None) if node is not None else None
        return {
            "chain_id": self.chain_id, "id": uuid.uuid4().hex, "at": utc_stamp(self.clock()),
            "actor": subject, "actor_scheme": scheme, "action": action,
            "resource": None if resource is None else str(resource), "outcome": outcome,
            "reason": None if reason is None else self._redactor.text(str(reason)),
            "node_id": None if node_id is None else str(node_id),
            "correlation_id": _context.correlation_id.get(), "trace_id": self._trace_id(),
            "details": self._details_json(details),
        }

    @staticmethod
    def _to_record(row: Mapping[str, Any]) -> AuditRecord:
        values = {c: row[c] for c in COLUMNS}
        values["seq"] = int(values["seq"])
        text = values["details"]
        values["details"] = json.loads(text) if text is not None else None
        return AuditRecord(**values)

    # -- appending ---------------------------------------------------------------------------

    async def _read_head(self, tx: Any) -> tuple[int, str]:
        row = await tx.fetch_one(
            f"SELECT seq, hash FROM {self.table} WHERE chain_id = :c ORDER BY seq DESC LIMIT 1",
            {"c": self.chain_id})
        if row is not None:
            return int(row["seq"]), str(row["hash"])
        archived = await self._archive_anchor(tx, self.chain_id)
        if archived is not None:
            return archived
        return 0, self.hasher.genesis(self.chain_id)

    async def _archive_anchor(self, tx: Any, chain_id: str) -> tuple[int, str] | None:
        row = await tx.fetch_one(
            f"SELECT seq, hash FROM {self.anchors_table} WHERE chain_id = :c AND kind = "
            "'archive' ORDER BY seq DESC LIMIT 1", {"c": chain_id})
        return (int(row["seq"]), str(row["hash"])) if row is not None else None

    async def _lock(self, tx: Any) -> None:
        if self.db.dialect == "postgresql":
            await tx.execute("SELECT pg_advisory_xact_lock(hashtext(:k))", {"k": self._lock_key})

    async def _append_tx(self, tx: Any, prepared: Sequence[dict[str, Any]]
                         ) -> list[dict[str, Any]]:
        await self._lock(tx)
        head = self._head
        checked = head is not None and head[0] > 0
        if head is None:
            head = await self._read_head(tx)
        rows: list[dict[str, Any]] = []
        seq, prev = head
        for fields in prepared:
            seq += 1
            row = dict(fields, seq=seq, prev_hash=prev)
            row["hash"] = self.hasher.digest(prev.encode() + record_body(row))
            prev = row["hash"]
            rows.append(row)
        first = True
        for row in rows:
            if first and checked:
                done = await tx.execute(self._insert_checked_sql,
                                        {**row, "expect": head[1], "chain_key": row["chain_id"]})
                if done != 1:  # another writer appended since this process last did
                    self._head = None
                    return await self._append_tx(tx, prepared)
            else:
                await tx.execute(self._insert_sql, row)
            first = False
        return rows

    async def _append(self, prepared: Sequence[dict[str, Any]]) -> list[AuditRecord]:
        t0 = time.perf_counter()
        db = self.db
        try:
            await db.ensure_migrated(OWNER)
            rows: list[dict[str, Any]] = await db.run_in_transaction(self._append_tx, prepared)
        except Exception as exc:
            self._head = None
            self._failed(exc)
            outcome = prepared[0]["outcome"] if prepared else None
            action = prepared[0]["action"] if prepared else None
            raise AuditWriteError(
                f"audit record not written to {self.table} (chain {self.chain_id!r}): "
                f"{type(exc).__name__}: {exc}", action=action, outcome=outcome) from exc
        last = rows[-1]
        self._head = (last["seq"], last["hash"])
        self._write_failed_at = None
        self._write_failure = None
        self._hist("audit_append_duration_seconds", time.perf_counter() - t0)
        for row in rows:
            self._count(row["outcome"])
        every = self.config.anchor_every
        if every:
            for row in rows:
                if row["seq"] % every == 0:
                    await self._emit(Anchor(self.chain_id, row["seq"], row["hash"],
                                            utc_stamp(self.clock())))
        return [self._to_record(row) for row in rows]

    def _count(self, outcome: str) -> None:
        bound = self._counted.get(outcome)
        if bound is None:
            m = self._metrics
            bound = m.bind_counter("audit_records_total", {"outcome": outcome}) \
                if m is not None and hasattr(m, "bind_counter") else _no_metric
            self._counted[outcome] = bound
        bound(1)

    def _failed(self, exc: BaseException) -> None:
        self._write_failed_at = self.monotonic()
        self._write_failure = f"{type(exc).__name__}: {exc}"[:300]
        self._inc("audit_write_errors_total", 1)

    async def record(self, action: str, *, resource: str | None = None, outcome: str,
                     reason: str | None = None, details: Mapping[str, Any] | None = None,
                     actor: Any = None) -> AuditRecord:
        """Append one record to the chain and return it (with its ``seq`` and ``hash``).

        Args:
            action: what was done (``"refund"``, ``"process"``, ``"authenticate"``).
            resource: what it was done to (``"order:42"``), or ``None``.
            outcome: ``success``, ``failure``, ``denied``, ``rejected``, ``error`` or
                ``started``.
            reason: why (an error type, a denial reason); scrubbed.
            details: JSON data; values under secret-looking keys (``scrub_keys``) and secrets
                in text (bearer tokens, JWTs, URL passwords) become ``[REDACTED]`` before
                hashing.
            actor: a subject string or a ``Principal``; ``None``: the call's principal
                (``_context.principal``), else anonymous.

        Inside an open ``db.transaction()`` of the same task the record joins it (it commits
        or rolls back with the caller's work). The table is created by the database's
        migrations (``start()``, or lazily by the first audit call; created inside a
        transaction that rolls back, it is created again by the next call).

        Raises:
            AuditWriteError: the record could not be stored (the chain is unchanged).
            ValueError / TypeError: a bad outcome, action, actor or details.
        """
        fields = self._prepare(action, resource=resource, outcome=outcome, reason=reason,
                               details=details, actor=actor)
        return (await self._append([fields]))[0]

    async def record_many(self, records: Iterable[Mapping[str, Any]]) -> list[AuditRecord]:
        """Append several records in one transaction (all or none).

        Each item holds :meth:`record`'s arguments: ``{"action": ..., "outcome": ..., ...}``.
        """
        prepared = []
        for item in records:
            spec = dict(item)
            try:
                action = spec.pop("action")
                outcome = spec.pop("outcome")
            except KeyError as exc:
                raise ValueError(f"each record needs 'action' and 'outcome', one lacks "
                                 f"{exc.args[0]!r}") from None
            unknown = set(spec) - {"resource", "reason", "details", "actor"}
            if unknown:
                raise ValueError(f"unknown record fields {sorted(unknown)}: use action, "
                                 "outcome, resource, reason, details, actor")
            prepared.append(self._prepare(action, outcome=outcome, **spec))
        if not prepared:
            return []
        return await self._append(prepared)

    # -- the sync API ------------------------------------------------------------------------

    def _sync(self) -> _SyncRunner:
        runner = self._runner.get("runner")
        if runner is None:
            with self._runner_lock:
                runner = self._runner.get("runner")
                if runner is None:
                    runner = self._runner["runner"] = _SyncRunner()
        return runner

    def run_sync(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn()`` (a coroutine function) on the audit log's private loop and wait."""
        return self._sync().run(fn)

    def record_sync(self, action: str, *, resource: str | None = None, outcome: str,
                    reason: str | None = None, details: Mapping[str, Any] | None = None,
                    actor: Any = None) -> AuditRecord:
        """:meth:`record` for sync code (a plain ``def process``, authentication's sync guard).

        The record is built here (so the caller's principal, correlation id and trace id are
        the ones recorded) and written on a private event loop in a daemon thread.
        """
        fields = self._prepare(action, resource=resource, outcome=outcome, reason=reason,
                               details=details, actor=actor)

        async def write() -> AuditRecord:
            return (await self._append([fields]))[0]

        return self._sync().run(write)

    async def aclose(self) -> None:
        """Stop the sync API's private loop (its engines disposed first)."""
        runner = self._runner.pop("runner", None)
        if runner is not None:
            await asyncio.to_thread(runner.stop, self.db.aclose)

    # -- anchors -----------------------------------------------------------------------------

    async def _emit(self, anchor: Anchor) -> None:
        sink = self._sink
        try:
            if sink == "log":
                node = self._node
                log = node.log if (self._logging and node is not None) else logger
                log.info("audit anchor chain={} seq={} hash={} at={}", anchor.chain_id,
                         anchor.seq, anchor.hash, anchor.at)
            elif sink == "event_bus":
                await self._node.event_bus.publish(ANCHOR_TOPIC, anchor.to_dict())
            else:
                assert isinstance(sink, Path)
                line = json.dumps(anchor.to_dict(), separators=(",", ":")) + "\n"
                await asyncio.to_thread(_append_line, sink, line)
        except Exception:  # the record is stored; a lost anchor only weakens the evidence
            logger.opt(exception=True).warning(
                "audit_log: anchor for seq {} could not be written to {}", anchor.seq,
                self.config.anchor_sink)

    async def anchor(self) -> Anchor:
        """The chain's current head as an :class:`Anchor`, also sent to ``anchor_sink``."""
        await self.db.ensure_migrated(OWNER)
        async with self.db.transaction(readonly=True) as tx:
            seq, head = await self._read_head(tx)
        out = Anchor(self.chain_id, seq, head, utc_stamp(self.clock()))
        await self._emit(out)
        return out

    def _load_anchors(self, anchors: Any) -> list[Anchor]:
        if anchors is None:
            if isinstance(self._sink, Path) and self._sink.exists():
                anchors = self._sink
            else:
                return []
        if isinstance(anchors, str | Path):
            out = []
            for n, line in enumerate(Path(anchors).read_text().splitlines(), start=1):
                if line.strip():
                    try:
                        out.append(Anchor.from_dict(json.loads(line)))
                    except ValueError as exc:
                        raise ValueError(f"anchors file {str(anchors)!r} line {n}: {exc}"
                                         ) from None
            return out
        return [a if isinstance(a, Anchor) else Anchor.from_dict(a) for a in anchors]

    # -- verification ------------------------------------------------------------------------

    async def verify(self, chain_id: str | None = None, start_seq: int = 1,
                     end_seq: int | None = None, anchors: Any = None) -> VerifyReport:
        """Recompute the chain and report the first problem (never raises on tampering).

        Args:
            chain_id: the chain (default: the configured one).
            start_seq / end_seq: the range (inclusive). From seq 1 the first record must
                follow the genesis, or the newest ``archive()`` anchor once records were
                archived; from a later seq it must follow the stored record before it.
            anchors: :class:`Anchor` objects (or their dicts), or the path of a JSON-lines
                anchors file; ``None``: the ``file:`` anchor sink's file when there is one.

        See the package docstring for what is and is not detected.
        """
        chain = chain_id or self.chain_id
        if start_seq < 1:
            raise ValueError(f"start_seq must be >= 1, got {start_seq}")
        loaded = self._load_anchors(anchors)
        db = self.db
        await db.ensure_migrated(OWNER)
        # one snapshot for every page on PostgreSQL (SQLite reads one snapshot anyway)
        async with db.transaction(isolation="repeatable_read", readonly=True) as tx:
            archived = await self._archive_anchor(tx, chain)
            prev: str | None
            at_genesis = False
            begin = start_seq
            if archived is not None and start_seq <= archived[0] + 1:
                begin, prev = archived[0] + 1, archived[1]
            elif start_seq == 1:
                prev, at_genesis = self.hasher.genesis(chain), True
            else:
                prev = await tx.fetch_val(
                    f"SELECT hash FROM {self.table} WHERE chain_id = :c AND seq = :s",
                    {"c": chain, "s": start_seq - 1})
            verifier = ChainVerifier(chain, self.hasher, start_seq=begin, prev_hash=prev,
                                     at_genesis=at_genesis, anchors=loaded)
            feeding = True
            async for row in self._pages(tx, chain, begin, end_seq):
                if feeding:
                    feeding = verifier.feed(row)
                else:
                    verifier.scan_rest(row)
        report = verifier.report(end_seq=end_seq)
        self._inc("audit_verify_total", 1, {"result": "ok" if report.ok else "tampered"})
        return report

    async def _pages(self, tx: Any, chain: str, begin: int, end_seq: int | None,
                     page: int = 5000) -> AsyncIterator[Mapping[str, Any]]:
        """The chain's rows from ``begin`` in seq order, a page per round trip (keyset
        pagination: one statement per ``page`` rows instead of a cursor hop per row)."""
        sql = (f"SELECT {_COLS} FROM {self.table} WHERE chain_id = :c AND seq >= :b"
               + (" AND seq <= :e" if end_seq is not None else "") + " ORDER BY seq LIMIT :n")
        params: dict[str, Any] = {"c": chain, "b": begin, "n": page}
        if end_seq is not None:
            params["e"] = end_seq
        while True:
            rows = await tx.fetch_all(sql, params)
            for row in rows:
                yield row
            if len(rows) < page:
                return
            params["b"] = int(rows[-1]["seq"]) + 1

    # -- reading -----------------------------------------------------------------------------

    async def query(self, *, actor: str | None = None, action: str | None = None,
                    outcome: str | None = None, since: Any = None, until: Any = None,
                    limit: int = 1000, chain_id: str | None = None
                    ) -> AsyncIterator[AuditRecord]:
        """Records of the chain matching every filter given, in seq order (at most ``limit``).

        ``since`` / ``until`` are aware datetimes, epoch seconds or ISO strings (inclusive /
        exclusive).
        """
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        clauses = ["chain_id = :c"]
        params: dict[str, Any] = {"c": chain_id or self.chain_id, "lim": int(limit)}
        for name, value in (("actor", actor), ("action", action), ("outcome", outcome)):
            if value is not None:
                clauses.append(f"{name} = :{name}")
                params[name] = value
        lo, hi = _stamp_of(since, "since"), _stamp_of(until, "until")
        if lo is not None:
            clauses.append("at >= :since")
            params["since"] = lo
        if hi is not None:
            clauses.append("at < :until")
            params["until"] = hi
        await self.db.ensure_migrated(OWNER)
        sql = (f"SELECT {_COLS} FROM {self.table} WHERE {' AND '.join(clauses)} ORDER BY seq "
               "LIMIT :lim")
        async for row in self.db.stream(sql, params):
            yield self._to_record(row)

    # -- export and archive ------------------------------------------------------------------

    async def _write_export(self, tx: Any, path: Path, chain: str, upto: int | None
                            ) -> tuple[Anchor, int]:
        archived = await self._archive_anchor(tx, chain)
        if archived is not None:
            start, prev = archived[0] + 1, archived[1]
        else:
            start, prev = 1, self.hasher.genesis(chain)
        where = "chain_id = :c" + (" AND seq <= :u" if upto is not None else "")
        params: dict[str, Any] = {"c": chain}
        if upto is not None:
            params["u"] = upto
        lines = [export_line(export_header(chain, self.hasher, start, prev,
                                           utc_stamp(self.clock())))]
        count, last_seq, last_hash = 0, start - 1, prev
        async for row in tx.stream(f"SELECT {_COLS} FROM {self.table} WHERE {where} ORDER BY "
                                   "seq", params, batch=2000):
            rec = {"type": "record", **{c: row[c] for c in COLUMNS}}
            rec["seq"] = int(rec["seq"])
            if rec["details"] is not None:
                rec["details_json"] = rec["details"]
                rec["details"] = json.loads(rec["details"])
            lines.append(export_line(rec))
            count, last_seq, last_hash = count + 1, rec["seq"], rec["hash"]
        anchor = Anchor(chain, last_seq, last_hash, utc_stamp(self.clock()))
        lines.append(export_line({"type": "anchor", **anchor.to_dict()}))
        body = b"".join(lines)
        lines.append(export_line({"type": "end", "records": count,
                                  "digest": self.hasher.digest(body)}))
        await asyncio.to_thread(_write_atomic, path, b"".join(lines))
        return anchor, count

    async def export(self, path: str | os.PathLike[str], chain_id: str | None = None) -> Anchor:
        """Write the chain to ``path`` as JSON lines (header, records, final anchor, end line
        with a digest) and return the final anchor. ``onex audit verify PATH`` checks it
        offline."""
        await self.db.ensure_migrated(OWNER)
        async with self.db.transaction(readonly=True) as tx:
            anchor, _ = await self._write_export(tx, Path(path), chain_id or self.chain_id, None)
        return anchor

    async def archive(self, before_seq: int, path: str | os.PathLike[str]) -> Anchor:
        """Retention: export the records with ``seq < before_seq`` to ``path``, store an
        anchor for ``before_seq - 1``, and delete them, in one transaction.

        The deletion goes through the one path the append-only triggers allow (PostgreSQL: the
        transaction-local setting ``onex.audit_archive``; SQLite: a row in
        ``<table>_gate`` present only inside this transaction). ``verify()`` then starts from
        the archived anchor. Returns that anchor (also sent to ``anchor_sink``).
        """
        if before_seq < 2:
            raise ValueError(f"before_seq must be >= 2 (records before it are archived), got "
                             f"{before_seq}")
        upto = before_seq - 1
        db = self.db
        await db.ensure_migrated(OWNER)
        try:
            async with db.transaction() as tx:
                await self._lock(tx)
                exists = await tx.fetch_val(
                    f"SELECT hash FROM {self.table} WHERE chain_id = :c AND seq = :s",
                    {"c": self.chain_id, "s": upto})
                if exists is None:
                    raise ValueError(f"seq {upto} is not in chain {self.chain_id!r} (already "
                                     "archived, or not written yet)")
                anchor, _ = await self._write_export(tx, Path(path), self.chain_id, upto)
                await tx.execute(
                    f"INSERT INTO {self.anchors_table} (chain_id, seq, hash, at, kind) VALUES "
                    "(:c, :s, :h, :a, 'archive')",
                    {"c": anchor.chain_id, "s": anchor.seq, "h": anchor.hash, "a": anchor.at})
                if db.dialect == "postgresql":
                    await tx.execute("SET LOCAL onex.audit_archive = 'on'")
                else:
                    await tx.execute(f"INSERT INTO {self.gate_table} (open) VALUES (1)")
                await tx.execute(f"DELETE FROM {self.table} WHERE chain_id = :c AND seq <= :s",
                                 {"c": self.chain_id, "s": upto})
                if db.dialect == "postgresql":
                    await tx.execute("SET LOCAL onex.audit_archive = 'off'")
                else:
                    await tx.execute(f"DELETE FROM {self.gate_table}")
        except ValueError:
            raise
        except Exception as exc:
            raise AuditWriteError(f"archive of chain {self.chain_id!r} failed: "
                                  f"{type(exc).__name__}: {exc}", action="archive") from exc
        await self._emit(anchor)
        return anchor

    # -- health ------------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        """``unhealthy`` (``on_write_error: raise``) or ``degraded`` (``log``) while the last
        write failed; ``healthy`` once a write succeeds again."""
        if self._write_failed_at is None:
            return {"status": "healthy", "chain_id": self.chain_id}
        status = "unhealthy" if self.config.on_write_error == "raise" else _DEGRADED
        return {"status": status, "chain_id": self.chain_id,
                "reason": f"the last audit write failed ({self._write_failure})"}


def _append_line(path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(line)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
