"""Shared SQL engine plumbing for capabilities that store through SQLAlchemy (``database``).

SQLAlchemy and the drivers are imported lazily: composing a node never imports them, and they are
first imported when a statement first runs on an event loop. :func:`require_sql` checks the
drivers at setup with ``importlib.util.find_spec`` (no import).

:func:`async_engine` caches one ``AsyncEngine`` per (running loop, url, options) in a
``WeakKeyDictionary`` keyed by the loop: asyncpg and aiosqlite connections belong to the loop
that opened them, so each loop needs its own engine (and a node keeps working across repeated
``asyncio.run()`` calls).

Three kinds of database (:func:`resolve_url` maps a configured URL to one):

* **memory**: ``sqlite+aiosqlite:///file:onex-<namespace>?mode=memory&cache=shared&uri=true``,
  one connection per loop (``StaticPool``); a stdlib ``sqlite3`` keeper connection
  (:class:`MemoryKeeper`) keeps the shared-cache database alive across loops. The caller
  serialises transactions per loop (:func:`memory_lock`), because shared-cache SQLite raises
  ``SQLITE_LOCKED`` when two connections write.
* **file**: WAL, ``busy_timeout``, ``foreign_keys=ON``; the ``begin`` event opens write
  transactions with ``BEGIN IMMEDIATE`` (no lock-upgrade deadlocks) and read-only ones with a
  deferred ``BEGIN``.
* **postgresql**: each new connection creates the configured schema if it is missing and sets
  ``search_path`` to it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sqlite3
import threading
import weakref
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote as _urlquote

from onex_compose._redact import scrub_text

__all__ = [
    "ACCEPTED_SCHEMES",
    "MemoryKeeper",
    "ResolvedURL",
    "async_engine",
    "dispose_engines",
    "memory_lock",
    "require_sql",
    "resolve_url",
]

ACCEPTED_SCHEMES = ("sqlite:///path", "sqlite+aiosqlite:///path", "sqlite:///:memory:",
                    "postgresql://", "postgresql+asyncpg://", "postgresql+psycopg://")

_ASYNC_SCHEME = {"sqlite": "sqlite+aiosqlite", "sqlite+aiosqlite": "sqlite+aiosqlite",
                 "sqlite+pysqlite": "sqlite+aiosqlite",
                 "postgresql": "postgresql+asyncpg", "postgres": "postgresql+asyncpg",
                 "postgresql+asyncpg": "postgresql+asyncpg",
                 "postgresql+psycopg": "postgresql+psycopg"}

# driver module -> the extra that installs it
_DRIVERS = {"sqlite+aiosqlite": (("sqlalchemy", "aiosqlite"), "database"),
            "postgresql+asyncpg": (("sqlalchemy", "asyncpg"), "postgres"),
            "postgresql+psycopg": (("sqlalchemy", "psycopg"), "postgres")}


@dataclass(frozen=True)
class ResolvedURL:
    """A configured URL mapped to its async driver.

    Attributes:
        url: the URL SQLAlchemy gets (async driver scheme).
        kind: ``memory``, ``file`` or ``postgresql``.
        dialect: ``sqlite`` or ``postgresql``.
        memory_name: the shared-cache name of a memory database (``onex-<namespace>``).
    """

    url: str
    kind: str
    dialect: str
    memory_name: str | None = None

    @property
    def safe(self) -> str:
        """The URL with its password masked."""
        return scrub_text(self.url)

    def __repr__(self) -> str:
        return f"ResolvedURL({self.safe!r}, kind={self.kind!r})"


def memory_url(namespace: str) -> ResolvedURL:
    """The embedded shared in-memory SQLite database of ``namespace``."""
    name = f"onex-{_urlquote(namespace, safe='')}"
    return ResolvedURL(f"sqlite+aiosqlite:///file:{name}?mode=memory&cache=shared&uri=true",
                       "memory", "sqlite", name)


def resolve_url(url: str | None, namespace: str) -> ResolvedURL:
    """Map a configured URL (``None``: ``ONEX_DATABASE_URL``, else the memory DB of
    ``namespace``) to its async driver URL; an unknown scheme raises ``ValueError`` listing the
    accepted ones (password masked).

    Example:
        >>> resolve_url("postgresql://u:p@h/db", "onex").url
        'postgresql+asyncpg://u:p@h/db'
        >>> resolve_url(None, "app").kind in ("memory", "file", "postgresql")
        True
    """
    if not url:
        url = os.environ.get("ONEX_DATABASE_URL") or None
        if not url:
            return memory_url(namespace)
    scheme, sep, rest = url.partition("://")
    target = _ASYNC_SCHEME.get(scheme.lower()) if sep else None
    if target is None:
        raise ValueError(f"unsupported database URL {scrub_text(url)!r}; accepted schemes: "
                         + ", ".join(ACCEPTED_SCHEMES))
    if target == "sqlite+aiosqlite":
        path = rest[1:] if rest.startswith("/") else rest
        if path in ("", ":memory:") or path.startswith(":memory:?"):
            return memory_url(namespace)
        if not rest.startswith("/"):
            raise ValueError(f"unsupported database URL {scrub_text(url)!r}: a SQLite URL is "
                             "sqlite:///relative/path, sqlite:////absolute/path or "
                             "sqlite:///:memory:")
        return ResolvedURL(f"{target}://{rest}", "file", "sqlite")
    if not rest or rest.startswith("/"):
        raise ValueError(f"unsupported database URL {scrub_text(url)!r}: a PostgreSQL URL names "
                         "a host: postgresql://user:password@host:port/dbname")
    return ResolvedURL(f"{target}://{rest}", "postgresql", "postgresql")


_DIALECT_SCHEME = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}


def require_sql(dialect: ResolvedURL | str, capability: str = "database") -> None:
    """Fail at setup, with the fix, when SQLAlchemy or the driver is not installed.

    ``dialect`` is ``"sqlite"``, ``"postgresql"``, an async scheme such as
    ``"postgresql+psycopg"``, or a :class:`ResolvedURL`.
    """
    if isinstance(dialect, ResolvedURL):
        scheme = dialect.url.partition("://")[0]
    else:
        scheme = _DIALECT_SCHEME.get(dialect, dialect)
    if scheme not in _DRIVERS:
        raise ValueError(f"unknown SQL dialect {dialect!r}; known: sqlite, postgresql, "
                         + ", ".join(_DRIVERS))
    name = "sqlite" if scheme.startswith("sqlite") else "postgresql"
    modules, extra = _DRIVERS[scheme]
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        from onex_compose.exceptions import ConfigurationError

        raise ConfigurationError(
            f"{capability}: a {name} database ({scheme}) needs "
            f"{' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
            f"installed. Install with: pip install 'onex-compose[{extra}]'",
            capability=capability)


# -- the memory database's keeper --------------------------------------------------------------


class MemoryKeeper:
    """A stdlib ``sqlite3`` connection holding a shared-cache memory database open.

    Shared by every ``Database`` of one namespace in the process (reference counted): the
    database lives as long as any of them does, across event loops.
    """

    # reentrant: release() runs from weakref finalizers, which the garbage collector may call
    # inside acquire()/release() on the same thread (a plain Lock deadlocked there)
    _lock = threading.RLock()
    _open: dict[str, tuple[sqlite3.Connection, int]] = {}

    @classmethod
    def acquire(cls, name: str) -> None:
        with cls._lock:
            conn, count = cls._open.get(name, (None, 0))
            if conn is None:
                conn = sqlite3.connect(f"file:{name}?mode=memory&cache=shared", uri=True,
                                       check_same_thread=False)
            cls._open[name] = (conn, count + 1)

    @classmethod
    def release(cls, name: str) -> None:
        with cls._lock:
            conn, count = cls._open.get(name, (None, 0))
            if conn is None:
                return
            if count <= 1:
                del cls._open[name]
                conn.close()
            else:
                cls._open[name] = (conn, count - 1)

    @classmethod
    def alive(cls, name: str) -> bool:
        return name in cls._open


# -- engines per loop ---------------------------------------------------------------------------

_engines: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Any, Any]] = (
    weakref.WeakKeyDictionary())
_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary())


def memory_lock(name: str) -> asyncio.Lock:
    """The running loop's lock serialising transactions on the memory database ``name``."""
    loop = asyncio.get_running_loop()
    per_loop = _locks.get(loop)
    if per_loop is None:
        per_loop = _locks[loop] = {}
    lock = per_loop.get(name)
    if lock is None:
        lock = per_loop[name] = asyncio.Lock()
    return lock



_WAL_ATTEMPTS = 4


def _switch_to_wal(cur: Any) -> None:
    """Put a SQLite file in WAL mode from a new connection's ``connect`` event.

    WAL is persistent in the file, so only the first connection ever switches: the current
    mode is read first (a shared lock) and the switch (an exclusive lock) is skipped when the
    file is already in WAL. Two processes opening a fresh file at once race for that
    exclusive lock; the loser waits ``busy_timeout`` and may still get ``database is locked``
    on a busy machine while the winner migrates, so the switch is retried a few times, sleeping
    on the event loop (this runs inside SQLAlchemy's greenlet, where ``await_only`` works).
    """
    from sqlalchemy.util import await_only

    delay = 0.05
    for attempt in range(_WAL_ATTEMPTS):
        try:
            cur.execute("PRAGMA journal_mode")
            row = cur.fetchone()
            if row is not None and str(row[0]).lower() == "wal":
                return
            cur.execute("PRAGMA journal_mode = WAL")
            return
        except Exception as exc:  # the driver's OperationalError, adapted by SQLAlchemy
            text = str(exc).lower()
            if attempt == _WAL_ATTEMPTS - 1 or ("locked" not in text and "busy" not in text):
                raise
        await_only(_wal_pause(delay))
        delay *= 2


def _wal_pause(delay: float) -> Any:
    """The pause between two WAL switch attempts (a coroutine; tests replace it)."""
    return asyncio.sleep(delay)


def async_engine(resolved: ResolvedURL | str, **opts: Any) -> Any:
    """The running loop's ``AsyncEngine`` for ``resolved`` and ``opts`` (created on first use).

    ``resolved`` is a :class:`ResolvedURL` or a URL string (mapped by :func:`resolve_url`, an
    in-memory URL to the ``onex`` namespace's database).

    Options: ``pool_size``, ``max_overflow``, ``pool_timeout``, ``pool_recycle``,
    ``pool_pre_ping``, ``connect_timeout``, ``sqlite_busy_timeout``, ``sqlite_wal``, ``schema``,
    ``echo`` (a callable logging a statement, or ``None``).
    """
    if isinstance(resolved, str):
        resolved = resolve_url(resolved, "onex")
    loop = asyncio.get_running_loop()
    per_loop = _engines.get(loop)
    if per_loop is None:
        per_loop = _engines[loop] = {}
    key = (resolved.url, tuple(sorted(opts.items(), key=lambda kv: kv[0])))
    engine = per_loop.get(key)
    if engine is None:
        engine = per_loop[key] = _create(resolved, **opts)
    return engine


def existing_engine(resolved: ResolvedURL, **opts: Any) -> Any:
    """The running loop's engine for ``resolved`` and ``opts`` if one exists, else ``None``."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    key = (resolved.url, tuple(sorted(opts.items(), key=lambda kv: kv[0])))
    return _engines.get(loop, {}).get(key)


async def dispose_engines(url: str | None = None) -> None:
    """Dispose the running loop's engines (of ``url``, or all of them)."""
    loop = asyncio.get_running_loop()
    per_loop = _engines.get(loop, {})
    for key in [k for k in per_loop if url is None or k[0] == url]:
        await per_loop.pop(key).dispose()


def _create(resolved: ResolvedURL, *, pool_size: int = 5, max_overflow: int = 5,
            pool_timeout: float = 10.0, pool_recycle: float = 1800.0,
            pool_pre_ping: bool = True, connect_timeout: float = 5.0,
            sqlite_busy_timeout: float = 5.0, sqlite_wal: bool = True,
            schema: str | None = None, echo: Any = None) -> Any:
    from sqlalchemy import event
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import StaticPool

    kwargs: dict[str, Any] = {"hide_parameters": True}
    if resolved.kind == "memory":
        kwargs["poolclass"] = StaticPool
    else:
        kwargs.update(pool_size=pool_size, max_overflow=max_overflow, pool_timeout=pool_timeout,
                      pool_recycle=pool_recycle, pool_pre_ping=pool_pre_ping)
    if resolved.kind == "file":
        kwargs["connect_args"] = {"timeout": sqlite_busy_timeout}
    elif resolved.kind == "postgresql":
        if resolved.url.startswith("postgresql+asyncpg"):
            kwargs["connect_args"] = {"timeout": connect_timeout}
        else:
            kwargs["connect_args"] = {"connect_timeout": max(1, round(connect_timeout))}
    engine = create_async_engine(resolved.url, **kwargs)
    sync = engine.sync_engine

    if resolved.dialect == "sqlite":
        busy_ms = int(sqlite_busy_timeout * 1000)
        wal = sqlite_wal and resolved.kind == "file"

        @event.listens_for(sync, "connect")
        def _sqlite_connect(dbapi_conn: Any, record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (savepoints work)
            cur = dbapi_conn.cursor()
            try:
                cur.execute(f"PRAGMA busy_timeout = {busy_ms}")
                cur.execute("PRAGMA foreign_keys = ON")
                if wal:
                    _switch_to_wal(cur)
            finally:
                cur.close()

        immediate = "BEGIN" if resolved.kind == "memory" else "BEGIN IMMEDIATE"

        @event.listens_for(sync, "begin")
        def _sqlite_begin(conn: Any) -> None:
            options = conn.get_execution_options()
            if options.get("onex_autocommit"):  # one statement on its own: SQLite's autocommit
                return
            conn.exec_driver_sql("BEGIN" if options.get("onex_readonly") else immediate)

    elif schema:
        quoted = '"' + schema.replace('"', '""') + '"'

        @event.listens_for(sync, "connect", insert=True)
        def _pg_connect(dbapi_conn: Any, record: Any) -> None:
            autocommit = dbapi_conn.autocommit
            dbapi_conn.autocommit = True
            cur = dbapi_conn.cursor()
            try:
                try:
                    cur.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
                except Exception as exc:  # a concurrent CREATE SCHEMA won the race
                    if "already exists" not in str(exc) and "duplicate key" not in str(exc):
                        raise
                cur.execute(f"SET search_path TO {quoted}")
            finally:
                cur.close()
                dbapi_conn.autocommit = autocommit

    if echo is not None:
        @event.listens_for(sync, "before_cursor_execute")
        def _echo(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
                  executemany: bool) -> None:
            echo(statement)  # parameters are never logged

    return engine
