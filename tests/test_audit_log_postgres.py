"""audit_log on PostgreSQL: the tamper table, triggers (UPDATE, DELETE, TRUNCATE), 4 processes x
250 appends under the advisory lock, redaction, the guard, archive, and a server killed mid-run
(on_write_error raise/log, intent_records, resume after restart). One schema per test."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from audit_tamper import (
    delete,
    edit,
    insert_forged,
    rewrite_all,
    rows,
    swap,
    truncate_tail,
    writer_command,
)
from test_audit_log import Orders, PermissionDeniedError

from onex_compose import NodeEffect, compose
from onex_compose.capabilities import _context, _sql
from onex_compose.capabilities.audit_log import (
    AuditUnavailableError,
    AuditWriteError,
    verify_export,
)
from onex_compose.capabilities.database import DatabaseError

pytestmark = pytest.mark.postgres

AuditNode = compose(NodeEffect, ["audit_log"])


def _plain(dsn: str) -> str:
    return dsn.replace("postgresql+asyncpg://", "postgresql://")


@pytest.fixture
async def pg(postgres_dsn: str) -> AsyncIterator[dict[str, Any]]:
    """This test's database config: the shared server, a schema of its own (dropped after)."""
    import asyncpg

    schema = f"onextest_{uuid.uuid4().hex[:10]}"
    yield {"url": postgres_dsn, "schema": schema, "namespace": "t"}
    await _sql.dispose_engines()
    conn = await asyncpg.connect(_plain(postgres_dsn))
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def make(db: dict[str, Any], cls: Any = AuditNode, **audit: Any) -> Any:
    return cls(capability_config={"database": db, "audit_log": audit})


async def fill(node: Any, n: int, actor: str = "alice") -> None:
    for i in range(n):
        await node.audit.record("write", resource=f"order:{i}", outcome="success", actor=actor)


async def test_records_chain_and_verify(pg: dict[str, Any]) -> None:
    node = make(pg)
    await fill(node, 5)
    recs = [r async for r in node.audit.query(actor="alice")]
    assert [r.seq for r in recs] == [1, 2, 3, 4, 5]
    assert all(b.prev_hash == a.hash for a, b in zip(recs, recs[1:], strict=False))
    report = await node.audit.verify()
    assert (report.ok, report.checked) == (True, 5)


@pytest.mark.parametrize(("attack", "problem", "seq"), [
    pytest.param(lambda db, t: edit(db, t, 5), "edited", 5, id="edit-one-field"),
    pytest.param(lambda db, t: delete(db, t, 5), "deleted", 5, id="delete-middle"),
    pytest.param(lambda db, t: delete(db, t, 5, renumber=True), "deleted", 5,
                 id="delete-middle-renumbered"),
    pytest.param(lambda db, t: swap(db, t, 3, 7), "reordered", 3, id="swap-two"),
    pytest.param(lambda db, t: insert_forged(db, t, 5), "inserted", 5, id="insert-forged"),
])
async def test_tampering_is_found_at_the_first_affected_seq(
        pg: dict[str, Any], attack: Any, problem: str, seq: int) -> None:
    node = make(pg)
    await fill(node, 10)
    await attack(node.db, node.audit.table)
    report = await node.audit.verify()
    assert (report.ok, report.problem, report.first_bad_seq) == (False, problem, seq), report


async def test_tail_truncation_needs_a_newer_anchor(pg: dict[str, Any]) -> None:
    node = make(pg)
    await fill(node, 10)
    anchor = await node.audit.anchor()
    await truncate_tail(node.db, node.audit.table, 8)
    assert (await node.audit.verify()).ok  # documented: undetectable without anchors
    report = await node.audit.verify(anchors=[anchor])
    assert (report.problem, report.first_bad_seq) == ("truncated", 8)


async def test_whole_table_rewrite_sha256_undetected_hmac_detected(pg: dict[str, Any]) -> None:
    plain = make(pg)
    await fill(plain, 6)
    await rewrite_all(plain.db, plain.audit.table)
    assert (await plain.audit.verify()).ok  # documented limit of SHA-256 without anchors
    keyed = make(pg, chain_id="keyed", hmac_key="attacker-lacks-it")
    await fill(keyed, 6)
    await rewrite_all(keyed.db, keyed.audit.table, "keyed")
    report = await keyed.audit.verify()
    assert (report.ok, report.problem) == (False, "bad_genesis")


@pytest.mark.parametrize("sql", ["UPDATE t_audit_log SET actor = 'x' WHERE seq = 1",
                                 "DELETE FROM t_audit_log WHERE seq = 1",
                                 "TRUNCATE t_audit_log"])
async def test_the_triggers_reject_update_delete_and_truncate(pg: dict[str, Any],
                                                              sql: str) -> None:
    node = make(pg)
    await fill(node, 2)
    with pytest.raises(DatabaseError, match="append-only"):
        await node.db.execute(sql)
    assert (await node.audit.verify()).checked == 2


async def test_four_processes_append_a_gap_free_verified_chain(pg: dict[str, Any]) -> None:
    node = make(pg)
    await node.audit.verify()  # migrated before the writers race
    procs = [subprocess.Popen(writer_command({"database": pg}, 250, f"p{i}"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(4)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert [r["seq"] for r in await rows(node.db, node.audit.table)] == list(range(1, 1001))
    report = await node.audit.verify()
    assert (report.ok, report.checked) == (True, 1000)


async def test_redaction_and_the_guard(pg: dict[str, Any]) -> None:
    node = make(pg, compose(Orders, ["audit_log"]))
    token = _context.principal.set(_context.Principal("alice", "api_key"))
    try:
        await node.process({"n": 1})
        with pytest.raises(PermissionDeniedError):
            await node.process({"deny": True})
        with pytest.raises(KeyError):
            await node.process({"boom": True})
    finally:
        _context.principal.reset(token)
    await node.audit.record("login", outcome="failure",
                            details={"password": "hunter2", "auth": "Bearer abc.def"})
    recs = [r async for r in node.audit.query()]
    assert [(r.actor, r.outcome) for r in recs[:3]] == [
        ("alice", "success"), ("alice", "denied"), ("alice", "error")]
    assert recs[3].details == {"password": "[REDACTED]", "auth": "[REDACTED]"}
    assert (await node.audit.verify()).ok


async def test_archive(pg: dict[str, Any], tmp_path: Path) -> None:
    node = make(pg)
    await fill(node, 10)
    anchor = await node.audit.archive(6, tmp_path / "a.jsonl")
    assert anchor.seq == 5
    assert [r["seq"] for r in await rows(node.db, node.audit.table)] == [6, 7, 8, 9, 10]
    assert verify_export((tmp_path / "a.jsonl").read_bytes()).ok
    assert (await node.audit.verify()).checked == 5
    with pytest.raises(DatabaseError, match="append-only"):
        await node.db.execute("DELETE FROM t_audit_log WHERE seq = 6")
    assert (await make(pg).audit.record("x", outcome="success")).seq == 11


# -- a server killed mid-run -------------------------------------------------------------------


def _cfg(server: Any) -> dict[str, Any]:
    return {"url": server.url, "connect_timeout": 2, "pool_timeout": 2, "namespace": "t"}


async def _until_up(node: Any) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            await node.db.fetch_val("SELECT 1")
            return
        except DatabaseError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_server_killed_mid_run(private_postgres: Any) -> None:
    class Counted(Orders):
        calls = 0

    Node = compose(Counted, ["audit_log", "health_check"])
    raising = Node(capability_config={"database": _cfg(private_postgres)})
    logging_ = Node(capability_config={"database": _cfg(private_postgres),
                                       "audit_log": {"on_write_error": "log"}})
    intent = Node(capability_config={"database": _cfg(private_postgres),
                                     "audit_log": {"intent_records": True}})
    for node in (raising, logging_, intent):
        await node.process({"n": 0})
    assert Node.calls == 3

    await asyncio.to_thread(private_postgres.stop)

    with pytest.raises(AuditWriteError) as info:
        await raising.process({"n": 1})
    assert info.value.result == {"ok": 1}  # it ran; the caller is told it was not audited
    assert (await raising.audit.health())["status"] == "unhealthy"
    assert (await logging_.process({"n": 2})) == {"ok": 2}
    assert (await logging_.audit.health())["status"] == "degraded"
    before = Node.calls
    with pytest.raises(AuditUnavailableError):
        await intent.process({"n": 3})
    assert Node.calls == before  # the body never ran

    await asyncio.to_thread(private_postgres.start)
    await _until_up(raising)
    await raising.process({"n": 4})
    await logging_.process({"n": 5})
    await intent.process({"n": 6})
    assert (await raising.audit.health())["status"] == "healthy"
    report = await raising.audit.verify()
    assert report.ok, report
    outcomes = [r.outcome async for r in raising.audit.query()]
    assert outcomes.count("started") == 2 and outcomes.count("success") == 6
    await _sql.dispose_engines()
