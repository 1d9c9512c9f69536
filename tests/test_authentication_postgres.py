"""authentication's database API key store on PostgreSQL (a schema of its own per test)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from onex_compose import NodeCompute, compose
from onex_compose.capabilities import _sql
from onex_compose.capabilities.authentication import AuthenticationError

pytestmark = pytest.mark.postgres

PEPPER = "pepper-0123456789-abcdefghijklmnop"


class Echo(NodeCompute):
    async def process(self, data: Any) -> Any:
        return self.current_principal().subject  # type: ignore[attr-defined]


Node = compose(Echo, ["authentication", "database"])


@pytest.fixture
async def pg(postgres_dsn: str) -> AsyncIterator[dict[str, Any]]:
    import asyncpg

    schema = f"onextest_{uuid.uuid4().hex[:10]}"
    yield {"url": postgres_dsn, "schema": schema}
    await _sql.dispose_engines()
    conn = await asyncpg.connect(postgres_dsn.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def node(pg: dict[str, Any]) -> Any:
    return Node(capability_config={
        "authentication": {"schemes": ["api_key"], "api_key_pepper": PEPPER,
                           "api_key_store": "database"},
        "database": {**pg, "namespace": "auth"}})


async def present(n: Any, key: str) -> Any:
    with n.credentials(api_key=key):
        return await n.process("x")


async def test_create_verify_and_revoke_across_two_nodes(pg: dict[str, Any]) -> None:
    a, b = node(pg), node(pg)
    created = await a.authenticator.create_api_key("ci-bot", roles=["reader"], tenant="t1")
    who = await b.authenticator.authenticate(f"ApiKey {created.key}")
    assert (who.subject, who.roles, who.tenant, who.key_id) == (
        "ci-bot", frozenset({"reader"}), "t1", created.key_id)
    assert await present(b, created.key) == "ci-bot"
    stored = await a.db.fetch_val("SELECT hash FROM auth_api_keys WHERE key_id = :k",
                                  {"k": created.key_id})
    assert stored == a.authenticator.hash_api_key(created.key)
    assert created.key.split("_", 2)[2] not in stored
    await a.authenticator.revoke_api_key(created.key_id)
    with pytest.raises(AuthenticationError) as info:  # no cache: revoked at once for b too
        await present(b, created.key)
    assert info.value.reason == "revoked" and created.key not in str(info.value)


async def test_one_byte_changed_and_unknown_ids_are_rejected(pg: dict[str, Any]) -> None:
    n = node(pg)
    created = await n.authenticator.create_api_key("svc")
    flipped = created.key[:-1] + ("A" if created.key[-1] != "A" else "B")
    for bad, reason in ((flipped, "unknown_api_key"),
                        (n.authenticator.generate_api_key().key, "unknown_api_key")):
        with pytest.raises(AuthenticationError) as info:
            await present(n, bad)
        assert info.value.reason == reason
    assert await present(n, created.key) == "svc"
