"""The database capability, parametrised over the SQLite memory DB, a SQLite file DB and
PostgreSQL (its own schema per test, dropped afterwards)."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import pickle
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from onex_compose import NodeEffect, compose
from onex_compose.capabilities import _sql
from onex_compose.capabilities.database import (
    Database,
    DatabaseConfig,
    DatabaseError,
    DatabaseIntegrityError,
    DatabaseUnavailableError,
    Migration,
    MigrationError,
    PoolExhaustedError,
    TransactionClosedError,
)
from onex_compose.exceptions import ConfigurationError

DbNode = compose(NodeEffect, ["database"])
PG = pytest.param("postgresql", marks=pytest.mark.postgres)


async def drop_schema(dsn: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture(params=["memory", "file", PG])
async def make(request: pytest.FixtureRequest, tmp_path: Any
               ) -> AsyncIterator[Callable[..., Any]]:
    """``make(**config)``: a node with the database capability on this test's database."""
    kind = request.param
    tag = uuid.uuid4().hex[:10]
    base: dict[str, Any]
    if kind == "memory":
        base = {"namespace": f"t{tag}"}
    elif kind == "file":
        base = {"url": f"sqlite:///{tmp_path}/db.sqlite"}
    else:
        base = {"url": request.getfixturevalue("postgres_dsn"), "schema": f"onextest_{tag}"}
    nodes: list[Any] = []

    def factory(cls: Any = DbNode, **overrides: Any) -> Any:
        node = cls(capability_config={"database": {**base, **overrides}})
        nodes.append(node)
        return node

    factory.kind = kind  # type: ignore[attr-defined]
    factory.base = base  # type: ignore[attr-defined]
    yield factory
    await _sql.dispose_engines()
    if kind == "postgresql":
        await drop_schema(base["url"], base["schema"])


@pytest.fixture
def logs() -> Any:
    """Every record the library logs during the test (loguru, enabled for the test)."""
    from loguru import logger

    lines: list[str] = []
    logger.enable("onex_compose")
    sink = logger.add(lambda m: lines.append(str(m)), level="DEBUG")
    yield lines
    logger.remove(sink)
    logger.disable("onex_compose")


async def _table(db: Database) -> None:
    await db.execute("CREATE TABLE acct (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)")


# -- commit and rollback ----------------------------------------------------------------------


async def test_normal_exit_commits(make: Any) -> None:
    db = make().db
    await _table(db)
    async with db.transaction() as tx:
        assert await tx.execute("INSERT INTO acct (id, v) VALUES (:id, :v)", {"id": 1, "v": 5}) == 1
    assert await db.fetch_all("SELECT id, v FROM acct") == [{"id": 1, "v": 5}]
    assert db.pool_status()["checked_out"] == 0


async def test_exception_rolls_back_and_reraises(make: Any) -> None:
    db = make().db
    await _table(db)
    with pytest.raises(KeyError):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO acct (id, v) VALUES (1, 5)")
            raise KeyError("boom")
    assert await db.fetch_val("SELECT count(*) FROM acct") == 0
    assert db.pool_status()["checked_out"] == 0


async def test_cancellation_mid_block_rolls_back_and_returns_the_connection(make: Any) -> None:
    db = make().db
    await _table(db)
    inside = asyncio.Event()

    async def writer() -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO acct (id, v) VALUES (1, 5)")
            inside.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(writer())
    await asyncio.wait_for(inside.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert db.pool_status()["checked_out"] == 0
    assert await db.fetch_val("SELECT count(*) FROM acct") == 0


async def test_timeout_expiry_rolls_back(make: Any) -> None:
    from onex_compose.capabilities.timeout import OperationTimeoutError

    node = make(compose(NodeEffect, ["database", "timeout"]))
    db = node.db
    await _table(db)

    async def slow() -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO acct (id, v) VALUES (1, 5)")
            await asyncio.sleep(30)

    t0 = time.monotonic()
    with pytest.raises(OperationTimeoutError):
        await node.with_timeout(slow, timeout=0.2)
    assert time.monotonic() - t0 < 5
    assert await db.fetch_val("SELECT count(*) FROM acct") == 0
    assert db.pool_status()["checked_out"] == 0


# -- savepoints and joining -------------------------------------------------------------------


async def test_rolling_back_a_nested_transaction_keeps_the_outer(make: Any) -> None:
    db = make().db
    await _table(db)
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO acct (id, v) VALUES (1, 1)")
        with pytest.raises(RuntimeError):
            async with db.transaction() as inner:
                await inner.execute("INSERT INTO acct (id, v) VALUES (2, 2)")
                raise RuntimeError("undo the inner one")
        async with db.transaction() as inner:
            await inner.execute("INSERT INTO acct (id, v) VALUES (3, 3)")
    assert [r["id"] for r in await db.fetch_all("SELECT id FROM acct ORDER BY id")] == [1, 3]


async def test_a_helper_joins_the_open_transaction(make: Any) -> None:
    db = make().db
    await _table(db)

    async def helper(i: int) -> None:
        await db.execute("INSERT INTO acct (id, v) VALUES (:id, 0)", {"id": i})

    with pytest.raises(ValueError):
        async with db.transaction() as tx:
            await helper(1)
            assert await tx.fetch_val("SELECT count(*) FROM acct") == 1  # visible inside
            assert db.pool_status()["checked_out"] == 1  # no second connection
            raise ValueError("roll back the helper's write too")
    assert await db.fetch_val("SELECT count(*) FROM acct") == 0


async def test_tx_after_its_block_is_closed(make: Any) -> None:
    db = make().db
    async with db.transaction() as tx:
        pass
    with pytest.raises(TransactionClosedError, match="transaction is closed"):
        await tx.fetch_val("SELECT 1")


# -- statements -------------------------------------------------------------------------------


async def test_fetch_variants_stream_and_core_constructs(make: Any) -> None:
    import sqlalchemy as sa

    db = make().db
    await _table(db)
    async with db.transaction() as tx:
        for i in range(25):
            await tx.execute("INSERT INTO acct (id, v) VALUES (:id, :v)", {"id": i, "v": i * 2})
    assert await db.fetch_one("SELECT v FROM acct WHERE id = :id", {"id": 3}) == {"v": 6}
    assert await db.fetch_one("SELECT v FROM acct WHERE id = -1") is None
    assert await db.fetch_val(sa.select(sa.func.count()).select_from(sa.table("acct"))) == 25
    rows = [r["id"] async for r in db.stream("SELECT id FROM acct ORDER BY id", batch=7)]
    assert rows == list(range(25))
    async with db.transaction() as tx:
        assert [r["v"] async for r in tx.stream("SELECT v FROM acct WHERE id < 3 ORDER BY id")
                ] == [0, 2, 4]


async def test_integrity_error_is_not_retriable(make: Any) -> None:
    db = make().db
    await _table(db)
    await db.execute("INSERT INTO acct (id, v) VALUES (1, 1)")
    with pytest.raises(DatabaseIntegrityError) as info:
        await db.execute("INSERT INTO acct (id, v) VALUES (:id, :v)", {"id": 1, "v": 987654321})
    assert info.value.onex_retriable is False
    assert "987654321" not in str(info.value)
    assert info.value.__cause__ is not None


async def test_other_sql_errors_keep_the_sqlalchemy_cause(make: Any) -> None:
    import sqlalchemy.exc

    db = make().db
    with pytest.raises(DatabaseError) as info:
        await db.fetch_all("SELECT * FROM no_such_table WHERE x = :secret",
                           {"secret": "s3cr3t-value"})
    assert isinstance(info.value.__cause__, sqlalchemy.exc.SQLAlchemyError)
    assert "s3cr3t-value" not in str(info.value)


async def test_bad_calls_get_clear_errors(make: Any) -> None:
    db = make().db
    with pytest.raises(TypeError, match="sql must be a string or a SQLAlchemy construct, got int"):
        await db.execute(123)
    with pytest.raises(TypeError, match="params must be a mapping"):
        await db.execute("SELECT 1", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="read_committed, repeatable_read, serializable"):
        db.transaction(isolation="bogus")
    assert db.pool_status()["checked_out"] == 0


# -- concurrency, retry, pool -----------------------------------------------------------------


async def test_concurrent_read_modify_write_increments_are_exact(make: Any) -> None:
    # SQLite: BEGIN IMMEDIATE serialises the writers (no "database is locked"); PostgreSQL:
    # serialization failures are retried (8 writers on one row need more than 3 attempts)
    db = make(retry_attempts=40, retry_max_delay=0.05).db
    await _table(db)
    await db.execute("INSERT INTO acct (id, v) VALUES (1, 0)")

    async def bump(tx: Any) -> None:
        v = await tx.fetch_val("SELECT v FROM acct WHERE id = 1")
        await asyncio.sleep(0)
        await tx.execute("UPDATE acct SET v = :v WHERE id = 1", {"v": v + 1})

    async def plain() -> None:  # SQLite: no retry at all, so "database is locked" would fail
        async with db.transaction() as tx:
            await bump(tx)

    if make.kind == "postgresql":
        await asyncio.gather(*(db.run_in_transaction(bump, isolation="serializable")
                               for _ in range(8)))
    else:
        await asyncio.gather(*(plain() for _ in range(8)))
    assert await db.fetch_val("SELECT v FROM acct WHERE id = 1") == 8


# the memory DB has no pool to exhaust (one connection per loop, transactions serialised)
@pytest.mark.parametrize("make", ["file", PG], indirect=True)
async def test_pool_exhaustion_raises_no_sooner_than_pool_timeout(make: Any) -> None:
    node = make(pool_size=1, max_overflow=0, pool_timeout=0.2)
    db = node.db
    held = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with db.transaction(readonly=True) as tx:
            await tx.fetch_val("SELECT 1")
            held.set()
            await release.wait()

    task = asyncio.create_task(holder())
    await asyncio.wait_for(held.wait(), 10)
    t0 = time.monotonic()
    with pytest.raises(PoolExhaustedError) as info:
        await db.fetch_val("SELECT 1")
    waited = time.monotonic() - t0
    release.set()
    await task
    assert 0.2 <= waited < 3
    assert "pool_size=1" in str(info.value) and "pool_timeout=0.2" in str(info.value)
    assert info.value.pool_size == 1
    snap = node.metrics.snapshot()["counters"]
    assert snap["db_pool_timeouts_total"] == 1
    assert (await db.health())["status"] == "degraded"


# -- migrations -------------------------------------------------------------------------------

MIGRATIONS = [
    Migration("001_create", {"sqlite": "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)",
                             "postgresql": "CREATE TABLE items (id SERIAL PRIMARY KEY, name TEXT)"}),
    Migration("002_index", "CREATE INDEX items_name ON items (name)"),
]


async def test_migrations_apply_once_in_order_and_are_idempotent(make: Any) -> None:
    db = make().db
    db.register_migrations("things", MIGRATIONS)
    await db.migrate()
    await db.migrate()
    other = make().db  # a fresh Database on the same DB re-checks instead of re-applying
    other.register_migrations("things", MIGRATIONS)
    await other.ensure_migrated("things")
    rows = await db.fetch_all(f"SELECT owner, id FROM {db.migrations_table} ORDER BY id")
    assert [(r["owner"], r["id"]) for r in rows] == [("things", "001_create"),
                                                      ("things", "002_index")]
    await db.execute("INSERT INTO items (name) VALUES ('a')")


async def test_a_changed_checksum_raises_naming_the_migration(make: Any) -> None:
    db = make().db
    db.register_migrations("things", MIGRATIONS)
    await db.migrate()
    other = make().db
    other.register_migrations("things", [MIGRATIONS[0], Migration(
        "002_index", "CREATE INDEX items_name2 ON items (name)")])
    with pytest.raises(MigrationError, match="things/002_index"):
        await other.migrate()


async def test_start_migrates_and_lazy_mode_migrates_before_the_first_statement(make: Any
                                                                                ) -> None:
    node = make()
    node.db.register_migrations("things", MIGRATIONS)
    await node.start()
    assert await node.db.fetch_val("SELECT count(*) FROM items") == 0
    await node.aclose()
    lazy = make(migrate_on_start=False)
    lazy.db.register_migrations("lazy", [Migration("001", "CREATE TABLE lazy_t (x INTEGER)")])
    assert await lazy.db.fetch_val("SELECT count(*) FROM lazy_t") == 0


# -- health, metrics, reconfiguration, pickling -----------------------------------------------


async def test_health_check_is_registered_and_metrics_are_counted(make: Any) -> None:
    node = make(compose(NodeEffect, ["database", "health_check"]))
    report = await node.health_check()
    assert "database" in str(report)
    h = await node.db.health()
    assert h["status"] == "healthy" and h["dialect"] == node.db.dialect
    assert set(h["pool"]) == {"size", "checked_out", "overflow"}
    with pytest.raises(DatabaseError):
        await node.db.fetch_val("SELECT * FROM nope")
    snap = node.metrics.snapshot()
    c = snap["counters"]
    assert c['db_statements_total{op="fetch",outcome="ok"}'] >= 1
    assert c['db_statements_total{op="fetch",outcome="error"}'] == 1
    assert c['db_transactions_total{outcome="commit"}'] >= 1
    assert c['db_transactions_total{outcome="rollback"}'] >= 1
    assert snap["gauges"]["db_pool_checked_out"] == 0
    assert any(k.startswith("db_statement_duration_seconds") for k in snap["histograms"])


async def test_reconfiguration_keeps_identity_and_pickle_reconnects(make: Any) -> None:
    node = make()
    db = node.db
    await _table(db)
    await db.execute("INSERT INTO acct (id, v) VALUES (1, 1)")
    node.setup_database({**make.base, "pool_size": 2})
    assert node.db is db and db.config.pool_size == 2
    clone = pickle.loads(pickle.dumps(node))
    assert clone.db is not db
    assert (clone.db.config.url, clone.db.config.namespace) == (db.config.url, db.config.namespace)
    assert await clone.db.fetch_val("SELECT v FROM acct WHERE id = 1") == 1


def test_memory_rows_survive_three_event_loops() -> None:
    ns = f"m{uuid.uuid4().hex[:8]}"
    node = DbNode(capability_config={"database": {"namespace": ns}})

    async def step(i: int) -> int:
        if i == 0:
            await node.db.execute("CREATE TABLE t (x INTEGER)")
        await node.db.execute("INSERT INTO t (x) VALUES (:x)", {"x": i})
        n = int(await node.db.fetch_val("SELECT count(*) FROM t"))
        await node.db.aclose()
        return n

    assert [asyncio.run(step(i)) for i in range(3)] == [1, 2, 3]


async def test_memory_namespaces_share_and_separate() -> None:
    ns = f"m{uuid.uuid4().hex[:8]}"
    a = DbNode(capability_config={"database": {"namespace": ns}})
    b = DbNode(capability_config={"database": {"namespace": ns}})
    c = DbNode(capability_config={"database": {"namespace": ns + "x"}})
    await a.db.execute("CREATE TABLE shared (x INTEGER)")
    await a.db.execute("INSERT INTO shared (x) VALUES (7)")
    assert await b.db.fetch_val("SELECT x FROM shared") == 7
    with pytest.raises(DatabaseError, match="no such table"):
        await c.db.fetch_val("SELECT x FROM shared")
    await _sql.dispose_engines()


# -- configuration errors and secrets ----------------------------------------------------------


def test_unknown_scheme_lists_accepted_ones_with_the_password_masked() -> None:
    with pytest.raises(ConfigurationError) as info:
        DbNode(capability_config={"database": {"url": "mysql://app:hunter2@db/x"}})
    text = str(info.value)
    assert "hunter2" not in text and "postgresql+asyncpg://" in text and "sqlite:///" in text


def test_plain_schemes_map_to_async_drivers() -> None:
    assert _sql.resolve_url("postgresql://u@h/d", "n").url == "postgresql+asyncpg://u@h/d"
    assert _sql.resolve_url("sqlite:///x.db", "n").url == "sqlite+aiosqlite:///x.db"
    assert _sql.resolve_url("sqlite:///:memory:", "n").kind == "memory"
    assert _sql.resolve_url(None, "n").memory_name == "onex-n"


async def test_async_engine_is_cached_per_loop_and_options() -> None:
    url = "sqlite:///:memory:"
    a = _sql.async_engine(url, pool_size=1)
    assert _sql.async_engine(url, pool_size=1) is a
    assert _sql.async_engine(url, pool_size=2) is not a
    same = await asyncio.to_thread(lambda: asyncio.run(_engine_in_new_loop(url, a)))
    assert same is False  # another loop gets its own engine
    await _sql.dispose_engines()


async def _engine_in_new_loop(url: str, first: Any) -> bool:
    engine = _sql.async_engine(url, pool_size=1)
    await _sql.dispose_engines()
    return engine is first


def test_require_sql_by_dialect(monkeypatch: pytest.MonkeyPatch) -> None:
    _sql.require_sql("sqlite")
    _sql.require_sql("postgresql")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ConfigurationError, match=r"pip install 'onex-compose\[database\]'"):
        _sql.require_sql("sqlite")


def test_the_facility_satisfies_the_protocol() -> None:
    from onex_compose.capabilities.database import DatabaseProtocol

    assert isinstance(DbNode().db, DatabaseProtocol)


def test_missing_driver_gives_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def fake(name: str, *args: Any) -> Any:
        return None if name == "asyncpg" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    with pytest.raises(ConfigurationError, match=r"pip install 'onex-compose\[postgres\]'"):
        DbNode(capability_config={"database": {"url": "postgresql://u@127.0.0.1/x"}})


async def test_the_password_never_appears(caplog: pytest.LogCaptureFixture, logs: list[str]
                                          ) -> None:
    from onex_compose import explain

    url = "postgresql://app:Sup3rS3cret@127.0.0.1:1/x"
    node = DbNode(capability_config={"database": {"url": url, "connect_timeout": 1,
                                                  "echo": True}})
    caplog.set_level(logging.DEBUG)
    with pytest.raises(DatabaseUnavailableError) as info:  # nothing listens on port 1
        await node.db.fetch_val("SELECT 1")
    assert info.value.onex_retriable is True
    await _sql.dispose_engines()
    texts = [str(info.value), repr(node.db), node.db.url_safe, caplog.text, "".join(logs),
             str(explain(type(node))), repr(node.db.config), str(await node.db.health())]
    for text in texts:
        assert "Sup3rS3cret" not in text
    assert "***" in node.db.url_safe


def test_composing_without_statements_does_not_import_sqlalchemy() -> None:
    import subprocess
    import sys

    code = ("import sys; from onex_compose import NodeEffect, compose;"
            "N = compose(NodeEffect, ['database']); n = N(); n.db.dialect;"
            "print('sqlalchemy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_config_mirrors_the_contract() -> None:
    from pathlib import Path

    import yaml

    import onex_compose.capabilities.database as pkg

    contract = yaml.safe_load(
        (Path(pkg.__file__).parent / "mixin_database.yaml").read_text())["database_config"]
    model = DatabaseConfig()
    assert set(DatabaseConfig.model_fields) == set(contract)
    for key, value in contract.items():
        assert model.model_dump()[key] == value, key
    assert DatabaseConfig(schema="s").schema_name == "s"


_MIGRATOR = """
import asyncio, sys
from onex_compose import NodeEffect, compose
from onex_compose.capabilities.database import Migration
node = compose(NodeEffect, ["database"])(capability_config={"database": {"url": sys.argv[1]}})
node.db.register_migrations("race", [
    Migration(f"{i:03d}", f"CREATE TABLE race_{i} (x INTEGER)") for i in range(5)])
async def main():
    await node.db.migrate()
    await node.db.aclose()
asyncio.run(main())
"""


@pytest.mark.slow
async def test_two_processes_migrate_concurrently_on_a_sqlite_file(tmp_path: Any) -> None:
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path}/race.db"
    procs = [subprocess.Popen([sys.executable, "-c", _MIGRATOR, url],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        _, err = await asyncio.to_thread(p.communicate, timeout=60)
        assert p.returncode == 0, err.decode()[-2000:]
    db = DbNode(capability_config={"database": {"url": url}}).db
    rows = await db.fetch_all("SELECT id, count(*) AS n FROM onex_migrations GROUP BY id "
                              "ORDER BY id")
    assert [(r["id"], r["n"]) for r in rows] == [(f"{i:03d}", 1) for i in range(5)]
    await _sql.dispose_engines()



async def test_the_wal_switch_waits_out_another_process_holding_the_file(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two processes opening a fresh file race for the exclusive lock that switching to WAL
    # takes; the loser must retry rather than fail with "database is locked".
    import sqlite3

    path = tmp_path / "held.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x INTEGER)")
    holder.execute("BEGIN EXCLUSIVE")  # rollback-journal mode: nobody can read or switch
    pauses: list[float] = []

    def pause(delay: float) -> Any:
        pauses.append(delay)
        if holder.in_transaction:
            holder.execute("COMMIT")  # the other process finishes while we back off
        return asyncio.sleep(0)

    monkeypatch.setattr(_sql, "_wal_pause", pause)
    url = f"sqlite:///{path}"
    db = DbNode(capability_config={"database": {"url": url, "sqlite_busy_timeout": 0}}).db
    try:
        assert await db.fetch_val("SELECT count(*) FROM t") == 0
        assert await db.fetch_val("PRAGMA journal_mode") == "wal"
        assert pauses == [0.05]
    finally:
        holder.close()
        await db.aclose()
        await _sql.dispose_engines()

async def test_a_database_pickles_to_its_config(make: Any) -> None:
    db = make().db
    clone = pickle.loads(pickle.dumps(db))
    assert clone.config == db.config and clone is not db
    assert await clone.fetch_val("SELECT 1") == 1


async def test_orm_session_and_echo_without_parameters(make: Any, logs: list[str]) -> None:
    import sqlalchemy as sa

    node = make(echo=True)
    db = node.db
    await _table(db)
    async with db.session() as s, s.begin():
        await s.execute(sa.text("INSERT INTO acct (id, v) VALUES (:id, :v)"),
                        {"id": 1, "v": 424242})
    assert await db.fetch_val("SELECT v FROM acct WHERE id = :id", {"id": 1}) == 424242
    text = "".join(logs)
    assert "SELECT v FROM acct" in text and "INSERT INTO acct" in text
    assert "424242" not in text


@pytest.mark.parametrize("make", ["file"], indirect=True)
async def test_file_database_pragmas(make: Any) -> None:
    db = make(sqlite_busy_timeout=2.5).db
    async with db.transaction() as tx:
        assert await tx.fetch_val("PRAGMA journal_mode") == "wal"
        assert await tx.fetch_val("PRAGMA foreign_keys") == 1
        assert await tx.fetch_val("PRAGMA busy_timeout") == 2500
