"""The ``database`` capability: ``self.db``, transactions and migrations over SQLAlchemy.

``self.db`` is a :class:`Database`. One API for SQLite (the embedded default: an in-memory
database per ``namespace``, or a file) and PostgreSQL:

* ``async with db.transaction(isolation=None, readonly=False) as tx`` commits on normal exit and
  rolls back on any exception (cancellation and timeouts included), always returning the
  connection to the pool. A ``transaction()`` opened inside another in the same task is a
  SAVEPOINT; ``db.execute``/``fetch_*``/``stream`` called inside the block join it (the open
  transaction travels in a ContextVar), else run in a transaction of their own.
* Joining is per task: a task started inside a block (``create_task``, ``gather``) does not
  join it and opens its own transaction; on the memory database, whose transactions are
  serialised per loop, awaiting such a task from inside the block would wait for the block to
  end, so give the child task the ``tx`` instead.
* ``run_in_transaction(fn, *args, isolation=...)`` runs ``fn(tx, *args)`` again on a conflict
  (SQLSTATE 40001/40P01, SQLite busy): through the node's ``with_retry`` when ``retry`` is
  composed, else its own bounded full-jitter loop.
* When a deadline is set (the timeout capability), a PostgreSQL transaction gets
  ``SET LOCAL statement_timeout`` equal to the remaining time: the server cancels the query.
* Migrations (``register_migrations(owner, [Migration(id, sql)])``) are applied in order, once,
  recorded with checksums in ``<namespace>_migrations``, serialised across processes
  (``pg_advisory_xact_lock`` / ``BEGIN IMMEDIATE``).
* Errors: :class:`DatabaseError` and below (unavailable, pool exhausted, conflict, integrity,
  migration); messages never include bound parameters or the URL's password.
* With ``health_check`` composed, ``db.health()`` is registered as the ``database`` check.
* With ``tracing`` composed (``database`` in its ``instrument`` list), every statement is a
  CLIENT span ``db.query`` (``db.system.name``, ``db.namespace``, ``db.operation.name`` from
  the statement's first keyword; never its parameters) and every transaction a
  ``db.transaction`` span around its statements, ended with ``db.transaction.outcome``
  (``commit``, ``rollback``, ``conflict``). Without tracing, one attribute test per
  statement.

Layout: ``_model.py`` (config, errors, :class:`Migration`, the protocol), ``_db.py`` (the
facility), the engine plumbing in ``capabilities/_sql.py``, the contract
``mixin_database.yaml`` beside them.

Example:
    >>> import asyncio
    >>> from onex_compose import NodeEffect, compose
    >>> Node = compose(NodeEffect, ["database"])
    >>> node = Node(capability_config={"database": {"namespace": "doctest_db"}})
    >>> async def demo():
    ...     async with node.db.transaction() as tx:
    ...         await tx.execute("CREATE TABLE IF NOT EXISTS t (v INTEGER)")
    ...         await tx.execute("INSERT INTO t (v) VALUES (:v)", {"v": 41})
    ...     return await node.db.fetch_val("SELECT v + 1 FROM t")
    >>> asyncio.run(demo())
    42
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from onex_compose import coerce_config, facility, has_capability
from onex_compose.capabilities._traced import tracer_for
from onex_compose.capabilities.database._db import Database, Transaction
from onex_compose.capabilities.database._model import (
    DatabaseConfig,
    DatabaseError,
    DatabaseIntegrityError,
    DatabaseProtocol,
    DatabaseUnavailableError,
    Migration,
    MigrationError,
    PoolExhaustedError,
    TransactionClosedError,
    TransactionConflictError,
)

__all__ = [
    "Database",
    "DatabaseConfig",
    "DatabaseError",
    "DatabaseIntegrityError",
    "DatabaseProtocol",
    "DatabaseUnavailableError",
    "Migration",
    "MigrationError",
    "MixinDatabase",
    "PoolExhaustedError",
    "Transaction",
    "TransactionClosedError",
    "TransactionConflictError",
]


class MixinDatabase:
    """Database connectivity and transaction management: ``self.db`` (a :class:`Database`).

    Configured by the ``database`` subcontract (:class:`DatabaseConfig`). Calling
    ``setup_database`` again reconfigures the same ``Database`` object (audit_log and other
    capabilities hold ``node.db``).

    Example:
        >>> from onex_compose import NodeEffect
        >>> class Service(NodeEffect, MixinDatabase):
        ...     pass
        >>> Service().db.dialect
        'sqlite'
    """

    __onex_capability__ = "database"
    __slots__ = ()

    def setup_database(self, config: DatabaseConfig | Mapping[str, Any] | None = None) -> None:
        """Build (or reconfigure) ``self.db`` from the database subcontract."""
        cfg = coerce_config(DatabaseConfig, config, "database")
        node: Any = self
        old = getattr(node, "db", None)
        if isinstance(old, Database):
            old.configure(cfg)
            db = old
        else:
            db = Database(cfg)
        db.bind(metrics=node.metrics, node=node, retry=has_capability(self, "retry"),
                logging=has_capability(self, "logging"))
        db.configure(cfg)
        if has_capability(self, "tracing"):
            db.use_tracer(tracer_for(self, "database"))
        node.db = db
        if has_capability(self, "health_check"):
            node.register_health_check(db.health, name="database")

    @facility
    def db(self) -> Database:
        """The node's database (defaults when ``setup_database`` never ran)."""
        node: Any = self
        db = Database(DatabaseConfig())
        db.bind(metrics=node.metrics, node=node, retry=has_capability(self, "retry"),
                logging=has_capability(self, "logging"))
        db.configure(db.config)
        return db

    async def start_database(self) -> None:
        """Apply the registered migrations (``migrate_on_start``)."""
        node: Any = self
        if node.db.config.migrate_on_start:
            await node.db.migrate()

    async def close_database(self) -> None:
        """Dispose the running loop's engines of this database."""
        node: Any = self
        db = getattr(node, "db", None)
        if isinstance(db, Database):
            await db.aclose()
