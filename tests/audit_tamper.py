"""Tampering with an audit table by direct SQL (shared by the SQLite and PostgreSQL tests).

Each function plays an attacker with write access to the database: the append-only triggers are
switched off first (``ALTER TABLE ... DISABLE TRIGGER ALL`` as the owner on PostgreSQL, the
triggers dropped on SQLite), then rows are changed with plain SQL. Attackers know the algorithm
but not the HMAC key: forged hashes are SHA-256.
"""

from __future__ import annotations

import sys
import textwrap
from typing import Any

from onex_compose.capabilities.audit_log import Hasher, record_body
from onex_compose.capabilities.audit_log._chain import COLUMNS

ATTACKER = Hasher(None)
_OFFSET = 1_000_000


async def open_up(db: Any, table: str) -> None:
    """Switch the append-only triggers off."""
    if db.dialect == "postgresql":
        await db.execute(f"ALTER TABLE {table} DISABLE TRIGGER ALL")
    else:
        for name in ("no_update", "no_delete"):
            await db.execute(f"DROP TRIGGER IF EXISTS {table}_{name}")


async def rows(db: Any, table: str, chain_id: str = "default") -> list[dict[str, Any]]:
    got = await db.fetch_all(f"SELECT {', '.join(COLUMNS)} FROM {table} WHERE chain_id = :c "
                             "ORDER BY seq", {"c": chain_id})
    return [dict(r) for r in got]


async def edit(db: Any, table: str, seq: int, column: str = "actor",
               value: str = "mallory") -> None:
    await open_up(db, table)
    await db.execute(f"UPDATE {table} SET {column} = :v WHERE seq = :s", {"v": value, "s": seq})


async def delete(db: Any, table: str, seq: int, renumber: bool = False) -> None:
    await open_up(db, table)
    await db.execute(f"DELETE FROM {table} WHERE seq = :s", {"s": seq})
    if renumber:
        await _shift(db, table, seq + 1, -1)


async def _shift(db: Any, table: str, from_seq: int, by: int) -> None:
    await db.execute(f"UPDATE {table} SET seq = seq + {_OFFSET} WHERE seq >= :s", {"s": from_seq})
    await db.execute(f"UPDATE {table} SET seq = seq - {_OFFSET} + ({by}) WHERE seq >= :o",
                     {"o": _OFFSET})


async def swap(db: Any, table: str, a: int, b: int) -> None:
    await open_up(db, table)
    await db.execute(f"UPDATE {table} SET seq = -1 WHERE seq = :a", {"a": a})
    await db.execute(f"UPDATE {table} SET seq = :a WHERE seq = :b", {"a": a, "b": b})
    await db.execute(f"UPDATE {table} SET seq = :b WHERE seq = -1", {"b": b})


async def insert_forged(db: Any, table: str, at_seq: int, chain_id: str = "default") -> None:
    """Shift records ``at_seq..`` up by one and put a forged record, hashed with SHA-256 and
    linked to its predecessor, at ``at_seq``."""
    await open_up(db, table)
    before = {r["seq"]: r for r in await rows(db, table, chain_id)}
    await _shift(db, table, at_seq, 1)
    prev = before[at_seq - 1]
    forged = dict(prev, seq=at_seq, id="f" * 32, actor="mallory", action="refund",
                  outcome="success", prev_hash=prev["hash"])
    forged["hash"] = ATTACKER.digest(forged["prev_hash"].encode() + record_body(forged))
    cols = ", ".join(COLUMNS)
    await db.execute(f"INSERT INTO {table} ({cols}) VALUES "
                     f"({', '.join(':' + c for c in COLUMNS)})", forged)


async def truncate_tail(db: Any, table: str, from_seq: int) -> None:
    await open_up(db, table)
    await db.execute(f"DELETE FROM {table} WHERE seq >= :s", {"s": from_seq})


async def rewrite_all(db: Any, table: str, chain_id: str = "default",
                      actor_of_seq: tuple[int, str] = (2, "mallory")) -> None:
    """Change one record, then recompute the whole chain with SHA-256 from its genesis."""
    await open_up(db, table)
    prev = ATTACKER.genesis(chain_id)
    for row in await rows(db, table, chain_id):
        if row["seq"] == actor_of_seq[0]:
            row["actor"] = actor_of_seq[1]
        row["prev_hash"] = prev
        row["hash"] = ATTACKER.digest(prev.encode() + record_body(row))
        prev = row["hash"]
        await db.execute(f"UPDATE {table} SET actor = :actor, prev_hash = :prev_hash, "
                         "hash = :hash WHERE chain_id = :chain_id AND seq = :seq", row)


WRITER = textwrap.dedent("""
    import asyncio, json, sys
    from onex_compose import NodeEffect, compose

    cfg = json.loads(sys.argv[1])
    n = int(sys.argv[2])
    node = compose(NodeEffect, ["audit_log"])(capability_config=cfg)

    async def main():
        for i in range(n):
            await node.audit.record("write", resource=f"r:{i}", outcome="success",
                                    actor=sys.argv[3])
        await node.db.aclose()

    asyncio.run(main())
    print("done")
""")


def writer_command(cfg: dict[str, Any], n: int, actor: str) -> list[str]:
    """A ``subprocess`` command line: a process appending ``n`` records as ``actor``."""
    import json

    return [sys.executable, "-c", WRITER, json.dumps(cfg), str(n), actor]
