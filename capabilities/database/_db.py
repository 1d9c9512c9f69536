"""The :class:`Database` facility (``self.db``) and its :class:`Transaction`."""

from __future__ import annotations

import asyncio
import random
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import Any

from onex_compose.capabilities import _context, _sql
from onex_compose.capabilities._log import logger
from onex_compose.capabilities.database._model import (
    ISOLATIONS,
    DatabaseConfig,
    DatabaseError,
    DatabaseIntegrityError,
    DatabaseUnavailableError,
    Migration,
    MigrationError,
    PoolExhaustedError,
    TransactionClosedError,
    TransactionConflictError,
)

_current: ContextVar[Transaction | None] = ContextVar("onex_db_transaction", default=None)

_SQLA_ISOLATION = {"read_committed": "READ COMMITTED", "repeatable_read": "REPEATABLE READ",
                   "serializable": "SERIALIZABLE"}
_CONFLICT_STATES = {"40001", "40P01"}
_UNAVAILABLE_PREFIXES = ("08", "57P")
_OK_EXEC = {"op": "execute", "outcome": "ok"}
_OK_FETCH = {"op": "fetch", "outcome": "ok"}
_DEGRADED_WINDOW = 60.0


def _no_metric(*_: Any, **__: Any) -> None:
    return None


def _check_isolation(isolation: str | None) -> None:
    if isolation is not None and isolation not in ISOLATIONS:
        raise ValueError(f"isolation must be one of {', '.join(ISOLATIONS)} (or None), got "
                         f"{isolation!r}")


def _check_params(params: Any) -> None:
    if params is not None and not isinstance(params, Mapping):
        raise TypeError(f"params must be a mapping of parameter names to values, got "
                        f"{type(params).__name__}")


def _statement(sql: Any) -> Any:
    if isinstance(sql, str):
        from sqlalchemy import text

        return text(sql)
    from sqlalchemy.sql import ClauseElement

    if isinstance(sql, ClauseElement):
        return sql
    raise TypeError(f"sql must be a string or a SQLAlchemy construct, got {type(sql).__name__}")


def _sqlstate(exc: BaseException) -> str | None:
    orig = getattr(exc, "orig", None)
    for obj in (orig, getattr(orig, "__cause__", None), exc):
        state = getattr(obj, "sqlstate", None) or getattr(obj, "pgcode", None)
        if isinstance(state, str):
            return state
    return None


def _describe(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    inner = orig if orig is not None else exc
    text = str(inner).split("\n[SQL:", 1)[0].strip() or type(inner).__name__
    from onex_compose._redact import scrub_text

    return scrub_text(f"{type(inner).__name__}: {text}")


def _unavailable(exc: BaseException, state: str | None) -> bool:
    if state is not None and state.startswith(_UNAVAILABLE_PREFIXES):
        return True
    if getattr(exc, "connection_invalidated", False):
        return True
    orig = getattr(exc, "orig", None)
    for obj in (exc, orig, getattr(orig, "__cause__", None)):
        if obj is None:
            continue
        if isinstance(obj, OSError | ConnectionError):
            return True
        name = type(obj).__name__
        if name in ("ConnectionDoesNotExistError", "InterfaceError",
                    "ConnectionFailureError", "CannotConnectNowError",
                    "InternalClientError") or ("connection" in str(obj).lower() and (
                "closed" in str(obj).lower() or "lost" in str(obj).lower()
                or "refused" in str(obj).lower())):
            return True
    return False


def _rowcount(result: Any) -> int:
    return int(result.rowcount if result.rowcount is not None else -1)


def _all(result: Any) -> list[Mapping[str, Any]]:
    return list(result.mappings().all())


def _first(result: Any) -> Any:
    return result.mappings().first()


def _scalar(result: Any) -> Any:
    return result.scalar()


class Transaction:
    """An open transaction (or savepoint) on one connection; use it only inside its block."""

    __slots__ = ("_closed", "_db", "conn", "engine", "task")

    def __init__(self, db: Database, conn: Any, engine: Any) -> None:
        self._db = db
        self.conn = conn
        self.engine = engine
        self.task = asyncio.current_task()
        self._closed = False

    def _live(self) -> Any:
        if self._closed:
            raise TransactionClosedError("transaction is closed: use a tx only inside its "
                                         "'async with db.transaction()' block")
        return self.conn

    @property
    def closed(self) -> bool:
        return self._closed

    async def execute(self, sql: Any, params: Mapping[str, Any] | None = None) -> int:
        """Run a statement; return the number of rows it changed (``rowcount``)."""
        result = await self._db._run(self._live(), "execute", sql, params)
        return int(result.rowcount if result.rowcount is not None else -1)

    async def fetch_all(self, sql: Any, params: Mapping[str, Any] | None = None
                        ) -> list[Mapping[str, Any]]:
        result = await self._db._run(self._live(), "fetch", sql, params)
        return list(result.mappings().all())

    async def fetch_one(self, sql: Any, params: Mapping[str, Any] | None = None
                        ) -> Mapping[str, Any] | None:
        result = await self._db._run(self._live(), "fetch", sql, params)
        row: Mapping[str, Any] | None = result.mappings().first()
        return row

    async def fetch_val(self, sql: Any, params: Mapping[str, Any] | None = None) -> Any:
        result = await self._db._run(self._live(), "fetch", sql, params)
        return result.scalar()

    async def stream(self, sql: Any, params: Mapping[str, Any] | None = None, *,
                     batch: int = 500) -> AsyncIterator[Mapping[str, Any]]:
        """Rows through a server-side cursor, ``batch`` at a time."""
        conn = self._live()
        db = self._db
        stmt = db._prepare(sql, params)
        span = None
        if db._tracer is not None:
            # from the statement to its last row; not made current: the consumer's code runs
            # between the rows, and an abandoned generator is closed from another context
            span = db._tracer.start_span("db.query", kind="client",
                                         attributes=db._query_attrs(sql))
        t0 = time.perf_counter()
        try:
            result = await conn.stream(stmt, params or {},
                                       execution_options={"yield_per": batch})
            async for row in result.mappings():
                yield row
        except BaseException as exc:
            if isinstance(exc, Exception):
                db._inc("db_statements_total", 1, {"op": "stream", "outcome": "error"})
                error = db._translate(exc)
                if span is not None:
                    _fail_stream(span, error)
                raise error from exc
            if span is not None:  # closed early (GeneratorExit) or cancelled
                span.end()
            raise
        db._inc("db_statements_total", 1, {"op": "stream", "outcome": "ok"})
        db._hist("db_statement_duration_seconds", time.perf_counter() - t0)
        if span is not None:
            span.end()


class _TransactionContext:
    """``async with db.transaction() as tx``: commit on normal exit, roll back on any exception
    (cancellation and timeouts included), always return the connection."""

    __slots__ = ("_db", "_isolation", "_lock", "_outer", "_readonly", "_savepoint", "_span",
                 "_token", "_tx")

    def __init__(self, db: Database, isolation: str | None, readonly: bool) -> None:
        _check_isolation(isolation)
        self._db = db
        self._isolation = isolation
        self._readonly = readonly
        self._tx: Transaction | None = None
        self._savepoint: Any = None
        self._outer: Any = None
        self._lock: asyncio.Lock | None = None
        self._token: Any = None
        self._span: Any = None

    async def __aenter__(self) -> Transaction:
        db = self._db
        if db._tracer is not None:
            return await self._enter_traced(db)
        return await self._enter(db)

    async def _enter_traced(self, db: Database) -> Transaction:
        """:meth:`__aenter__` inside a ``db.transaction`` span (its statements are children)."""
        savepoint = db._joinable() is not None
        attrs = {**db._span_attrs, "db.transaction.savepoint": savepoint,
                 "db.transaction.readonly": self._readonly}
        isolation = self._isolation or db.config.isolation
        if isolation is not None and not savepoint:
            attrs["db.transaction.isolation"] = isolation
        scope = db._tracer.span("db.transaction", kind="client", attributes=attrs)
        span = (scope, scope.__enter__())
        try:
            tx = await self._enter(db)
        except BaseException as exc:
            _end_span(span, exc, outcome="not_started")
            raise
        self._span = span
        return tx

    async def _enter(self, db: Database) -> Transaction:
        parent = db._joinable()
        if parent is not None:
            conn = parent._live()
            try:
                self._savepoint = await conn.begin_nested()
            except Exception as exc:
                raise db._translate(exc) from exc
            tx = Transaction(db, conn, parent.engine)
        else:
            await db._ensure_migrated_lazily()
            engine = db._engine()
            if db._resolved.kind == "memory":
                self._lock = _sql.memory_lock(db._resolved.memory_name or "")
                await self._lock.acquire()
            try:
                conn, self._outer = await db._begin(engine, self._isolation or
                                                    db.config.isolation, self._readonly)
            except BaseException:
                if self._lock is not None:
                    self._lock.release()
                raise
            tx = Transaction(db, conn, engine)
        self._tx = tx
        self._token = _current.set(tx)
        return tx

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if self._span is not None:
            await self._exit_traced(exc)
            return
        await self._exit(exc)

    async def _exit(self, exc: BaseException | None) -> None:
        tx = self._tx
        assert tx is not None
        db = self._db
        _current.reset(self._token)
        tx._closed = True
        try:
            if self._savepoint is not None:
                await self._end_savepoint(exc)
            else:
                await self._end(tx, exc)
        finally:
            if self._lock is not None:
                self._lock.release()
        del db

    async def _exit_traced(self, exc: BaseException | None) -> None:
        """:meth:`__aexit__` that ends the transaction's span with ``db.transaction.outcome``
        (``commit``, ``rollback`` or ``conflict``)."""
        span, self._span = self._span, None
        try:
            await self._exit(exc)
        except BaseException as err:
            _end_span(span, err, outcome=_outcome_of(err))
            raise
        _end_span(span, exc, outcome="commit" if exc is None else _outcome_of(exc))

    async def _end_savepoint(self, exc: BaseException | None) -> None:
        sp = self._savepoint
        if exc is None:
            try:
                await sp.commit()
            except Exception as err:
                raise self._db._translate(err) from err
        else:
            try:
                await sp.rollback()
            except Exception:  # the outer transaction reports the failure
                logger.opt(exception=True).debug("database: savepoint rollback failed")

    async def _end(self, tx: Transaction, exc: BaseException | None) -> None:
        db = self._db
        conn = tx.conn
        try:
            if exc is None:
                try:
                    await self._outer.commit()
                except BaseException as err:
                    db._inc("db_transactions_total", 1, {"outcome": "rollback"})
                    await db._discard(conn)
                    if isinstance(err, Exception):
                        translated = db._translate(err)
                        if isinstance(translated, TransactionConflictError):
                            db._inc_outcome("conflict")
                        raise translated from err
                    raise
                db._inc_outcome("commit")
            else:
                if isinstance(exc, TransactionConflictError):
                    db._inc_outcome("conflict")
                else:
                    db._inc_outcome("rollback")
                try:
                    await asyncio.shield(self._outer.rollback())
                except BaseException:
                    await db._discard(conn)
        finally:
            await db._release(conn)


class Database:
    """The node's database (``self.db``): transactions, statements, migrations, health.

    Built from a :class:`DatabaseConfig`; engines are created per event loop on first use (none
    at setup). ``configure(config)`` reconfigures this same object.
    """

    # use_tracer(): statements and transactions become spans (class-level defaults: without a
    # tracer the instance keeps the attributes it had before tracing existed)
    _tracer: Any = None
    _span_attrs: dict[str, Any] = {}  # never mutated: use_tracer replaces it

    def __init__(self, config: DatabaseConfig | None = None, *, metrics: Any = None,
                 node: Any = None, retry: bool = False,
                 clock: Callable[[], float] | None = None) -> None:
        self.config = config or DatabaseConfig()
        self.clock = clock or time.monotonic
        self._metrics = metrics
        self._node_ref: Any = weakref.ref(node) if node is not None else None
        self._use_retry = retry and node is not None
        self._use_logging = False
        self._migrations: dict[str, list[Migration]] = {}
        self._migrated: set[str] = set()
        self._last_pool_timeout: float | None = None
        self._checked_out = 0
        self._keeper: str | None = None
        self._finalizer: Any = None
        self._apply(self.config)

    # -- configuration ---------------------------------------------------------------------

    def _apply(self, config: DatabaseConfig) -> None:
        from onex_compose.exceptions import ConfigurationError

        try:
            resolved = _sql.resolve_url(config.url, config.namespace)
        except ValueError as exc:
            raise ConfigurationError(f"database: {exc}", capability="database") from None
        _sql.require_sql(resolved)
        self.config = config
        self._resolved = resolved
        self._opts = self._engine_opts()
        self._loop_engine: tuple[Any, Any] | None = None
        if self._finalizer is not None:
            self._finalizer()  # releases the previous keeper
            self._finalizer = None
        if resolved.kind == "memory" and resolved.memory_name:
            _sql.MemoryKeeper.acquire(resolved.memory_name)
            self._finalizer = weakref.finalize(self, _sql.MemoryKeeper.release,
                                               resolved.memory_name)
        self._migrated = set()
        if self._tracer is not None:
            self._span_attrs = _span_attributes(resolved, config)
        m = self._metrics
        self._inc = m.increment if m is not None else _no_metric
        self._hist = m.histogram if m is not None else _no_metric
        self._gauge = m.gauge if m is not None else _no_metric

    def configure(self, config: DatabaseConfig) -> None:
        """Reconfigure in place (identity kept: other capabilities hold ``node.db``)."""
        self._apply(config)

    def bind(self, *, metrics: Any, node: Any, retry: bool, logging: bool = False) -> None:
        """Attach the node's metrics and (weakly) the node, whose ``with_retry`` runs
        :meth:`run_in_transaction`'s loop when ``retry`` is composed."""
        self._metrics = metrics
        self._node_ref = weakref.ref(node) if node is not None else None
        self._use_retry = retry and node is not None
        self._use_logging = logging and node is not None

    def use_tracer(self, tracer: Any) -> None:
        """Report statements and transactions as CLIENT spans on ``tracer`` (``None``: stop).

        Each statement is a ``db.query`` span (``db.system.name``, ``db.namespace``,
        ``db.operation.name``: the statement's first keyword; never its parameters or text),
        each transaction a ``db.transaction`` span around its statements, ended with
        ``db.transaction.outcome`` (``commit``, ``rollback``, ``conflict``). A failed
        statement's span has status ERROR and the error's ``db.response.status_code``
        (SQLSTATE) when there is one. ``setup_database`` calls this when the node composes
        tracing with ``database`` in its ``instrument`` list.
        """
        self._tracer = tracer
        self._span_attrs = _span_attributes(self._resolved, self.config) if tracer else {}

    def _query_attrs(self, sql: Any) -> dict[str, Any]:
        from onex_compose.capabilities._traced import sql_operation

        op = sql_operation(sql)
        return {**self._span_attrs, "db.operation.name": op} if op else dict(self._span_attrs)

    def _engine_opts(self) -> dict[str, Any]:
        c = self.config
        echo = None
        if c.echo:
            ref = weakref.ref(self)

            def echo(statement: str) -> None:  # the statement only: parameters never
                db = ref()
                node = db._node_ref() if db is not None and db._node_ref is not None else None
                if node is not None and getattr(db, "_use_logging", False):
                    node.log.info("database: {}", statement)
                else:
                    logger.info("database: {}", statement)
        return {"pool_size": c.pool_size, "max_overflow": c.max_overflow,
                "pool_timeout": c.pool_timeout, "pool_recycle": c.pool_recycle,
                "pool_pre_ping": c.pool_pre_ping, "connect_timeout": c.connect_timeout,
                "sqlite_busy_timeout": c.sqlite_busy_timeout, "sqlite_wal": c.sqlite_wal,
                "schema": c.schema_name if self._resolved.dialect == "postgresql" else None,
                "echo": echo}

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.config,))

    def __repr__(self) -> str:
        return f"<Database {self.url_safe} namespace={self.config.namespace!r}>"

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._resolved.dialect

    @property
    def url_safe(self) -> str:
        """The database URL with its password masked."""
        return self._resolved.safe

    @property
    def kind(self) -> str:
        """``memory``, ``file`` or ``postgresql``."""
        return self._resolved.kind

    # -- plumbing ----------------------------------------------------------------------------

    def _engine(self) -> Any:
        loop = asyncio.get_running_loop()
        cached = self._loop_engine
        if cached is not None and cached[0]() is loop:
            return cached[1]
        engine = _sql.async_engine(self._resolved, **self._opts)
        self._loop_engine = (weakref.ref(loop), engine)
        return engine

    def engine(self) -> Any:
        """The running loop's SQLAlchemy ``AsyncEngine`` (created on first use)."""
        return self._engine()

    def _joinable(self) -> Transaction | None:
        tx = _current.get()
        if tx is None or tx._closed or tx.task is not asyncio.current_task():
            return None
        if tx._db is self or tx.engine is self._engine():
            return tx
        return None

    def _inc_outcome(self, outcome: str) -> None:
        self._inc("db_transactions_total", 1, {"outcome": outcome})

    def pool_status(self) -> dict[str, int]:
        """``{"size", "checked_out", "overflow"}`` of the running loop's pool."""
        size, overflow = self.config.pool_size, 0
        checked = self._checked_out
        engine = _sql.existing_engine(self._resolved, **self._opts)
        if engine is not None:
            pool = engine.pool
            if hasattr(pool, "checkedout"):
                checked = pool.checkedout()
                overflow = max(0, pool.overflow())
                size = pool.size()
        if self._resolved.kind == "memory":
            size = 1
        return {"size": size, "checked_out": checked, "overflow": overflow}

    async def _connect(self, engine: Any) -> Any:
        try:
            conn = await engine.connect()
        except Exception as exc:
            raise self._translate(exc, connecting=True) from exc
        self._checked_out += 1
        self._gauge("db_pool_checked_out", self._checked_out)
        return conn

    async def _release(self, conn: Any) -> None:
        try:
            await conn.close()
        except BaseException:
            logger.opt(exception=True).debug("database: closing a connection failed")
        finally:
            self._checked_out -= 1
            self._gauge("db_pool_checked_out", self._checked_out)

    async def _discard(self, conn: Any) -> None:
        try:
            await conn.invalidate()
        except BaseException:
            logger.opt(exception=True).debug("database: invalidating a connection failed")

    async def _begin(self, engine: Any, isolation: str | None, readonly: bool
                     ) -> tuple[Any, Any]:
        conn = await self._connect(engine)
        try:
            pg = self._resolved.dialect == "postgresql"
            if pg and isolation is not None:
                await conn.execution_options(isolation_level=_SQLA_ISOLATION[isolation])
            elif not pg and readonly:
                await conn.execution_options(onex_readonly=True)
            # SQLAlchemy's autobegin opens the transaction with the first statement (one
            # round trip fewer than an explicit begin()); commit()/rollback() end it
            outer = conn
            if pg:
                if readonly:
                    await conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                timeout = self._statement_timeout()
                if timeout is not None:
                    ms = max(1, int(timeout * 1000))
                    await conn.exec_driver_sql(f"SET LOCAL statement_timeout = {ms}")
        except BaseException as exc:
            await self._discard(conn)
            await self._release(conn)
            if isinstance(exc, Exception):
                raise self._translate(exc) from exc
            raise
        return conn, outer

    def _statement_timeout(self) -> float | None:
        timeout = self.config.statement_timeout
        left = _context.remaining()
        if left is not None:
            left = max(left, 0.001)
            timeout = left if timeout is None else min(timeout, left)
        return timeout

    def _prepare(self, sql: Any, params: Any) -> Any:
        _check_params(params)
        return _statement(sql)

    async def _run(self, conn: Any, op: str, sql: Any, params: Mapping[str, Any] | None) -> Any:
        if self._tracer is not None:
            return await self._run_traced(conn, op, sql, params)
        return await self._execute(conn, op, sql, params)

    async def _run_traced(self, conn: Any, op: str, sql: Any,
                          params: Mapping[str, Any] | None) -> Any:
        """:meth:`_run` inside a ``db.query`` CLIENT span (the parameters never reach it)."""
        scope = self._tracer.span("db.query", kind="client", attributes=self._query_attrs(sql))
        span = (scope, scope.__enter__())
        try:
            result = await self._execute(conn, op, sql, params)
        except BaseException as exc:
            _end_span(span, exc)
            raise
        _end_span(span, None)
        return result

    async def _execute(self, conn: Any, op: str, sql: Any,
                       params: Mapping[str, Any] | None) -> Any:
        stmt = self._prepare(sql, params)
        t0 = time.perf_counter()
        try:
            result = await conn.execute(stmt, params) if params else await conn.execute(stmt)
        except Exception as exc:
            self._inc("db_statements_total", 1, {"op": op, "outcome": "error"})
            raise self._translate(exc) from exc
        self._inc("db_statements_total", 1, _OK_EXEC if op == "execute" else _OK_FETCH)
        self._hist("db_statement_duration_seconds", time.perf_counter() - t0)
        return result

    def _translate(self, exc: BaseException, *, connecting: bool = False) -> BaseException:
        """Map a driver/SQLAlchemy error to this capability's tree (never with parameters)."""
        if isinstance(exc, DatabaseError | TypeError | ValueError) and not hasattr(exc, "orig"):
            return exc
        name = type(exc).__name__
        if name == "TimeoutError" and type(exc).__module__.startswith("sqlalchemy"):
            self._last_pool_timeout = self.clock()
            self._inc("db_pool_timeouts_total", 1)
            status = self.pool_status()
            return PoolExhaustedError(
                f"database pool exhausted: no connection became free within "
                f"{self.config.pool_timeout} s (pool_size={status['size']}, "
                f"checked_out={status['checked_out']}, max_overflow="
                f"{self.config.max_overflow}, pool_timeout={self.config.pool_timeout})",
                pool_size=status["size"], checked_out=status["checked_out"],
                pool_timeout=self.config.pool_timeout)
        state = _sqlstate(exc)
        where = f"{self.dialect} database {self.url_safe}"
        if state in _CONFLICT_STATES:
            return TransactionConflictError(f"transaction conflict on {where} (SQLSTATE "
                                            f"{state}): {_describe(exc)}", sqlstate=state)
        if self.dialect == "sqlite" and ("database is locked" in str(exc)
                                         or "database table is locked" in str(exc)):
            return TransactionConflictError(f"transaction conflict on {where} (SQLITE_BUSY): "
                                            f"{_describe(exc)}", sqlstate=None)
        if name == "IntegrityError" or (state is not None and state.startswith("23")):
            return DatabaseIntegrityError(f"integrity error on {where}: {_describe(exc)}",
                                          sqlstate=state)
        if state == "57014" and _context.remaining() is not None and (
                (_context.remaining() or 0) <= 0.05):
            return _deadline_error(where, exc)
        if connecting or _unavailable(exc, state) or isinstance(exc, OSError):
            return DatabaseUnavailableError(f"{where} is unavailable: {_describe(exc)}",
                                            sqlstate=state)
        return DatabaseError(f"error on {where}: {_describe(exc)}", sqlstate=state)

    # -- statements outside a block: join the current transaction, else autocommit ---------

    async def _single(self, op: str, sql: Any, params: Mapping[str, Any] | None,
                      take: Callable[[Any], Any]) -> Any:
        """One statement outside any block, in autocommit mode (a single statement is atomic
        by itself; no BEGIN/COMMIT round trips). On PostgreSQL with a statement timeout or a
        deadline, in a transaction of its own (``SET LOCAL statement_timeout`` needs one)."""
        self._prepare(sql, params)
        sqlite = self._resolved.dialect == "sqlite"
        if not sqlite and self._statement_timeout() is not None:
            async with self.transaction() as tx:
                return take(await self._run(tx._live(), op, sql, params))
        await self._ensure_migrated_lazily()
        engine = self._engine()
        lock = (_sql.memory_lock(self._resolved.memory_name or "")
                if self._resolved.kind == "memory" else None)
        if lock is not None:
            await lock.acquire()
        try:
            conn = await self._connect(engine)
            try:
                if sqlite:
                    await conn.execution_options(onex_autocommit=True)
                else:
                    await conn.execution_options(isolation_level="AUTOCOMMIT")
                value = take(await self._run(conn, op, sql, params))
            except BaseException:
                self._inc_outcome("rollback")
                raise
            finally:
                await self._release(conn)
            self._inc_outcome("commit")
            return value
        finally:
            if lock is not None:
                lock.release()

    async def execute(self, sql: Any, params: Mapping[str, Any] | None = None) -> int:
        """Run a statement in the current transaction (if any), else on its own; return the
        number of rows it changed."""
        tx = self._joinable()
        if tx is not None:
            return await tx.execute(sql, params)
        return int(await self._single("execute", sql, params, _rowcount))

    async def fetch_all(self, sql: Any, params: Mapping[str, Any] | None = None
                        ) -> list[Mapping[str, Any]]:
        """All rows as mappings (in the current transaction, if any)."""
        tx = self._joinable()
        if tx is not None:
            return await tx.fetch_all(sql, params)
        rows: list[Mapping[str, Any]] = await self._single("fetch", sql, params, _all)
        return rows

    async def fetch_one(self, sql: Any, params: Mapping[str, Any] | None = None
                        ) -> Mapping[str, Any] | None:
        """The first row as a mapping, or ``None`` (in the current transaction, if any)."""
        tx = self._joinable()
        if tx is not None:
            return await tx.fetch_one(sql, params)
        row: Mapping[str, Any] | None = await self._single("fetch", sql, params, _first)
        return row

    async def fetch_val(self, sql: Any, params: Mapping[str, Any] | None = None) -> Any:
        """The first column of the first row, or ``None`` (in the current transaction, if
        any)."""
        tx = self._joinable()
        if tx is not None:
            return await tx.fetch_val(sql, params)
        return await self._single("fetch", sql, params, _scalar)

    async def stream(self, sql: Any, params: Mapping[str, Any] | None = None, *,
                     batch: int = 500) -> AsyncIterator[Mapping[str, Any]]:
        tx = self._joinable()
        if tx is not None:
            async for row in tx.stream(sql, params, batch=batch):
                yield row
            return
        async with self.transaction(readonly=True) as tx:
            async for row in tx.stream(sql, params, batch=batch):
                yield row

    def transaction(self, isolation: str | None = None, readonly: bool = False
                    ) -> _TransactionContext:
        """``async with db.transaction() as tx``; nested in the same task: a SAVEPOINT."""
        return _TransactionContext(self, isolation, readonly)

    def session(self) -> Any:
        """A SQLAlchemy ``AsyncSession`` on the running loop's engine
        (``expire_on_commit=False``)."""
        from sqlalchemy.ext.asyncio import AsyncSession

        return AsyncSession(self._engine(), expire_on_commit=False)

    # -- run_in_transaction ------------------------------------------------------------------

    async def run_in_transaction(self, fn: Callable[..., Awaitable[Any]], *args: Any,
                                 isolation: str | None = None, **kwargs: Any) -> Any:
        """``fn(tx, *args, **kwargs)`` in a transaction, run again on a conflict.

        With the ``retry`` capability the loop is the node's ``with_retry`` (its deadline,
        metrics and nested-scope rule); otherwise ``retry_attempts`` with full jitter.
        """
        _check_isolation(isolation)

        async def attempt() -> Any:
            async with self.transaction(isolation=isolation) as tx:
                return await fn(tx, *args, **kwargs)

        if self._joinable() is not None:  # inside a block: a savepoint, one attempt
            return await attempt()
        node = self._node_ref() if self._node_ref is not None else None
        if node is not None and self._use_retry:
            def conflict(exc: Exception) -> bool:
                return isinstance(exc, TransactionConflictError)

            def counted(_: Any) -> None:
                self._inc("db_transaction_retries_total", 1)

            return await node.with_retry(attempt, retry_if=conflict, before_sleep=counted)
        c = self.config
        for n in range(1, c.retry_attempts + 1):
            try:
                return await attempt()
            except TransactionConflictError:
                if n >= c.retry_attempts:
                    raise
                delay = random.uniform(0, min(c.retry_max_delay,
                                              c.retry_initial_delay * 2 ** (n - 1)))
                left = _context.remaining()
                if left is not None and delay >= left:
                    raise
                self._inc("db_transaction_retries_total", 1)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- migrations --------------------------------------------------------------------------

    def register_migrations(self, owner: str, migrations: list[Migration]) -> None:
        """Register ``owner``'s migrations (applied in this order, each once)."""
        ids = [m.id for m in migrations]
        if len(set(ids)) != len(ids):
            raise ValueError(f"migration ids of {owner!r} must be unique, got {ids}")
        for m in migrations:
            if not isinstance(m, Migration):
                raise TypeError(f"expected Migration objects, got {type(m).__name__}")
            m.statements(self.dialect)
        self._migrations[owner] = list(migrations)
        self._migrated.discard(owner)

    @property
    def migrations_table(self) -> str:
        return f"{self.config.namespace}_migrations"

    async def migrate(self) -> None:
        """Apply every registered owner's pending migrations."""
        for owner in list(self._migrations):
            await self._migrate_owner(owner)

    async def ensure_migrated(self, owner: str) -> None:
        """Apply ``owner``'s pending migrations unless this database already did."""
        if owner not in self._migrated:
            await self._migrate_owner(owner)

    async def _ensure_migrated_lazily(self) -> None:
        if self._migrations and not self.config.migrate_on_start and (
                self._migrated != set(self._migrations)) and not _migrating.get():
            await self.migrate()

    async def _migrate_owner(self, owner: str) -> None:
        migrations = self._migrations.get(owner, [])
        table = self.migrations_table
        dialect = self.dialect
        token = _migrating.set(True)
        try:
            async with self.transaction() as tx:
                if dialect == "postgresql":
                    await tx.execute("SELECT pg_advisory_xact_lock(hashtext(:k))",
                                     {"k": f"{self.config.namespace}:migrations"})
                await tx.execute(
                    f"CREATE TABLE IF NOT EXISTS {table} (owner VARCHAR(200) NOT NULL, "
                    "id VARCHAR(200) NOT NULL, checksum VARCHAR(64) NOT NULL, "
                    "applied_at VARCHAR(40) NOT NULL, PRIMARY KEY (owner, id))")
                rows = await tx.fetch_all(f"SELECT id, checksum FROM {table} WHERE owner = :o",
                                          {"o": owner})
                applied = {r["id"]: r["checksum"] for r in rows}
                for m in migrations:
                    checksum = m.checksum(dialect)
                    if m.id in applied:
                        if applied[m.id] != checksum:
                            raise MigrationError(
                                f"migration {owner}/{m.id} was already applied with another "
                                f"checksum ({applied[m.id][:12]}…, now {checksum[:12]}…): "
                                "an applied migration must not change; add a new one")
                        continue
                    try:
                        for statement in m.statements(dialect):
                            await tx.execute(statement)
                    except DatabaseError as exc:
                        raise MigrationError(f"migration {owner}/{m.id} failed: {exc}",
                                             sqlstate=exc.sqlstate) from exc
                    await tx.execute(
                        f"INSERT INTO {table} (owner, id, checksum, applied_at) "
                        "VALUES (:o, :i, :c, :t)",
                        {"o": owner, "i": m.id, "c": checksum,
                         "t": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        finally:
            _migrating.reset(token)
        self._migrated.add(owner)

    # -- health ------------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        """``{"status", "latency_ms", "dialect", "pool"}``: a ``SELECT 1`` round trip."""
        t0 = time.perf_counter()
        out: dict[str, Any] = {"dialect": self.dialect}
        try:
            await self.fetch_val("SELECT 1")
        except Exception as exc:
            out.update(status="unhealthy", reason=str(exc)[:300],
                       latency_ms=round((time.perf_counter() - t0) * 1000, 3),
                       pool=self.pool_status())
            return out
        status = "healthy"
        last = self._last_pool_timeout
        if last is not None and self.clock() - last < _DEGRADED_WINDOW:
            status = "degraded"
            out["reason"] = "the connection pool was exhausted in the last 60 s"
        out.update(status=status, latency_ms=round((time.perf_counter() - t0) * 1000, 3),
                   pool=self.pool_status())
        return out

    async def aclose(self) -> None:
        """Dispose the running loop's engines of this URL."""
        try:
            await _sql.dispose_engines(self._resolved.url)
        except RuntimeError:
            pass


_migrating: ContextVar[bool] = ContextVar("onex_db_migrating", default=False)


def _deadline_error(where: str, exc: BaseException) -> BaseException:
    from onex_compose.capabilities.timeout import OperationTimeoutError

    del where, exc
    return OperationTimeoutError("database statement", None, source="deadline")


def _rebuild(config: DatabaseConfig) -> Database:
    return Database(config)


def _span_attributes(resolved: _sql.ResolvedURL, config: DatabaseConfig) -> dict[str, Any]:
    """What every span of this database carries (OpenTelemetry's database conventions):
    ``db.system.name`` (``sqlite``/``postgresql``), ``db.namespace`` (the PostgreSQL database,
    ``|schema`` when one is configured; the SQLite file or memory database name) and, for
    PostgreSQL, ``server.address``/``server.port``. Never the user or the password."""
    from sqlalchemy.engine import make_url

    attrs: dict[str, Any] = {"db.system.name": resolved.dialect}
    if resolved.kind == "memory":
        attrs["db.namespace"] = resolved.memory_name or config.namespace
        return attrs
    url = make_url(resolved.url)
    namespace = url.database or ""
    if resolved.dialect == "postgresql":
        if config.schema_name:
            namespace = f"{namespace}|{config.schema_name}"
        if url.host:
            attrs["server.address"] = url.host
            attrs["server.port"] = url.port or 5432
    attrs["db.namespace"] = namespace
    return attrs


def _outcome_of(exc: BaseException) -> str:
    return "conflict" if isinstance(exc, TransactionConflictError) else "rollback"


def _end_span(entered: tuple[Any, Any], exc: BaseException | None, *,
              outcome: str | None = None) -> None:
    """End a ``(scope, span)`` entered with ``scope.__enter__()``: the transaction's outcome,
    the error's SQLSTATE, then the scope's exit (which records the exception, scrubbed, with
    status ERROR, and restores the previous current span)."""
    scope, span = entered
    if outcome is not None:
        span.set_attribute("db.transaction.outcome", outcome)
    state = getattr(exc, "sqlstate", None)
    if isinstance(state, str):
        span.set_attribute("db.response.status_code", state)
    if exc is None:
        scope.__exit__(None, None, None)
    else:
        scope.__exit__(type(exc), exc, exc.__traceback__)


def _fail_stream(span: Any, error: BaseException) -> None:
    """End a streaming statement's span (not current, so not a scope) after ``error``."""
    from onex_compose.capabilities._traced import mark_error

    state = getattr(error, "sqlstate", None)
    if isinstance(state, str):
        span.set_attribute("db.response.status_code", state)
    mark_error(span, type(error).__name__)
    span.end()
