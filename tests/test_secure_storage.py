"""The secure_storage capability on SQLite and PostgreSQL: basics, versions, rotation under load,
tampering and key loss, concurrent writers in two processes, authorization and audit, the leak
test, and a PostgreSQL server killed mid-rotation.

Each test runs on an in-memory SQLite database of its own and, marked ``postgres``, on the shared
server in a schema of its own (dropped afterwards)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import pickle
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import onex_compose.capabilities
from onex_compose import NodeEffect, Registry, compose, explain
from onex_compose.capabilities import _context, _sql
from onex_compose.capabilities import secure_storage as ss_module
from onex_compose.capabilities._context import Principal
from onex_compose.capabilities.authorization import PermissionDeniedError
from onex_compose.capabilities.encryption import Encryption
from onex_compose.capabilities.secure_storage import (
    MixinSecureStorage,
    RotationReport,
    Secret,
    SecretCorruptedError,
    SecretNotFoundError,
    SecureStorageConfig,
)
from onex_compose.exceptions import ConfigurationError, OnexError

CONTRACT = Path(ss_module.__file__).parent / "mixin_secure_storage.yaml"
K1 = Encryption.generate_key("k1")
K2 = Encryption.generate_key("k2")
MARKER = "PLAINTEXT-MARKER-7f3c9a"

Vault = compose(NodeEffect, ["secure_storage"])


def _plain(dsn: str) -> str:
    return dsn.replace("postgresql+asyncpg://", "postgresql://")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db_config(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, Any]]:
    """This test's database: a private SQLite memory database, or a PostgreSQL schema."""
    ns = f"ss{uuid.uuid4().hex[:8]}"
    if request.param == "sqlite":
        yield {"namespace": ns}
        await _sql.dispose_engines()
        return
    import asyncpg

    dsn = request.getfixturevalue("postgres_dsn")
    schema = f"onextest_{uuid.uuid4().hex[:10]}"
    yield {"url": dsn, "schema": schema, "namespace": ns}
    await _sql.dispose_engines()
    conn = await asyncpg.connect(_plain(dsn))
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def vault(db: dict[str, Any], keys: list[str] | None = None, cls: type = Vault,
          **config: Any) -> Any:
    return cls(capability_config={"encryption": {"keys": keys or [K1]}, "database": db,
                                  "secure_storage": config})


# ------------------------------------------------------------------------------------------------
# basics


async def test_put_get_versions_delete_list(db_config: dict[str, Any]) -> None:
    node = vault(db_config)
    s = node.secrets
    assert await s.put("db/password", "first", metadata={"owner": "ops"}) == 1
    assert await s.put("db/password", "second") == 2
    assert await s.put("api/key", b"\x00\xffbinary") == 1
    latest = await s.get("db/password")
    assert (latest.name, latest.version, latest.reveal()) == ("db/password", 2, "second")
    first = await s.get("db/password", version=1)
    assert first.reveal() == "first" and first.metadata == {"owner": "ops"}
    assert first.created_at is not None and first.created_at.tzinfo is not None
    assert (await s.get("api/key")).reveal() == b"\x00\xffbinary"
    assert [v.version for v in await s.versions("db/password")] == [1, 2]
    assert {v.kek_id for v in await s.versions("db/password")} == {"k1"}
    assert await s.list() == ["api/key", "db/password"]
    assert await s.list(prefix="db/") == ["db/password"]
    assert await s.list(prefix="d%") == []  # LIKE wildcards in the prefix are literal
    assert await s.delete("db/password") == 2
    with pytest.raises(SecretNotFoundError) as info:
        await s.get("db/password")
    assert str(info.value) == ("secret 'db/password' not found (never written, purged or "
                               "deleted)")
    assert isinstance(info.value, KeyError) and isinstance(info.value, OnexError)
    with pytest.raises(SecretNotFoundError):
        await s.get("db/password", version=1)
    with pytest.raises(SecretNotFoundError):
        await s.delete("db/password")
    assert all(v.deleted for v in await s.versions("db/password"))
    assert await s.list() == ["api/key"]
    assert await s.put("db/password", "again") == 3  # a new life after the tombstone
    assert (await s.get("db/password")).reveal() == "again"
    counters = node.metrics.snapshot()["counters"]
    assert counters['secrets_operations_total{op="put",outcome="ok"}'] == 4
    assert counters['secrets_operations_total{op="get",outcome="not_found"}'] == 2
    assert not any("db/password" in k for k in counters)  # names are never labels


async def test_delete_erases_the_key_material_and_ciphertext(db_config: dict[str, Any]) -> None:
    node = vault(db_config)
    await node.secrets.put("x", MARKER)
    await node.secrets.delete("x")
    row = await node.db.fetch_one(f"SELECT wrapped_dek, nonce, ciphertext, deleted FROM "
                                  f"{node.secrets.table}")
    assert row is not None and bytes(row["ciphertext"]) == b"" and bytes(
        row["wrapped_dek"]) == b"" and row["deleted"]


async def test_keep_versions_purges_older_ones(db_config: dict[str, Any]) -> None:
    node = vault(db_config, keep_versions=2)
    for i in range(5):
        await node.secrets.put("n", f"v{i}")
    assert [v.version for v in await node.secrets.versions("n")] == [4, 5]
    everything = vault(db_config, keep_versions=0)
    for i in range(3):
        await everything.secrets.put("m", f"v{i}")
    assert len(await everything.secrets.versions("m")) == 3


async def test_bad_names_and_oversized_values() -> None:
    node = vault({"namespace": f"ss{uuid.uuid4().hex[:8]}"}, max_value_size=8)
    with pytest.raises(ValueError, match=r"invalid secret name 'bad name!': it must match "
                                         r"name_pattern \^\[A-Za-z0-9_\.\\-/\]\{1,200\}\$"):
        await node.secrets.put("bad name!", "x")
    with pytest.raises(ValueError, match="is 9 bytes, over the limit of 8 bytes"):
        await node.secrets.put("ok", "123456789")
    with pytest.raises(TypeError, match="str or bytes"):
        await node.secrets.put("ok", 5)
    with pytest.raises(ValueError, match="invalid secret name"):
        await node.secrets.get("")
    with pytest.raises(ConfigurationError, match="name_pattern is not a regular expression"):
        vault({}, name_pattern="[")
    assert await node.secrets.put("ok", "12345678") == 1


def test_a_secret_hides_its_value_and_refuses_pickling() -> None:
    s = Secret("db/password", 3, {}, None, None, MARKER)
    assert repr(s) == str(s) == f"{s}" == f"{s:>40}" == "Secret('db/password', v3, ***)"
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(s)
    assert s.reveal() == MARKER


async def test_read_cache() -> None:
    clock = _context.ManualClock()
    node = vault({"namespace": f"ss{uuid.uuid4().hex[:8]}"}, read_cache_ttl=5.0)
    node.secrets.clock = clock
    await node.secrets.put("n", "one")
    first = await node.secrets.get("n")
    assert await node.secrets.get("n") is first  # a hit
    clock.advance(6)
    assert await node.secrets.get("n") is not first  # expired
    await node.secrets.put("n", "two")  # a write drops the name's entries
    assert (await node.secrets.get("n")).reveal() == "two"
    counters = node.metrics.snapshot()["counters"]
    assert counters['secrets_operations_total{op="get",outcome="cached"}'] == 1


# ------------------------------------------------------------------------------------------------
# rotation


async def test_rotation_under_load(db_config: dict[str, Any]) -> None:
    node = vault(db_config, keep_versions=0)
    names = [f"app/s{i:03d}" for i in range(60)]
    for name in names:
        await node.secrets.put(name, f"{MARKER}:{name}")
    node.setup_encryption({"keys": [K2, K1]})  # a new primary; the old key stays to decrypt
    failures: list[BaseException] = []

    async def reader() -> None:
        for i in range(1000):
            name = names[i % len(names)]
            try:
                assert (await node.secrets.get(name)).reveal() == f"{MARKER}:{name}"
            except Exception as exc:  # noqa: BLE001 - every failure is counted
                failures.append(exc)
            if i % 10 == 0:
                await asyncio.sleep(0)

    report, _ = await asyncio.gather(node.secrets.rotate_keys(batch=7), reader())
    assert failures == []
    assert report == RotationReport(60, 0, 0, (), "k2")
    assert {v.kek_id for n in names for v in await node.secrets.versions(n)} == {"k2"}
    assert node.metrics.snapshot()["counters"]["secrets_rewrapped_total"] == 60
    assert (await node.secrets.rotate_keys()).rewrapped == 0  # idempotent
    # the old key leaves the config: every secret still reads
    only_new = vault(db_config, keys=[K2])
    for name in names:
        assert (await only_new.secrets.get(name)).reveal() == f"{MARKER}:{name}"


async def test_rotation_leaves_the_data_ciphertext_untouched(db_config: dict[str, Any]) -> None:
    node = vault(db_config)
    await node.secrets.put("a", "value")
    sql = f"SELECT ciphertext, nonce, wrapped_dek FROM {node.secrets.table}"
    before = await node.db.fetch_one(sql)
    rotated = vault(db_config, keys=[K2, K1])
    await rotated.secrets.rotate_keys()
    after = await rotated.db.fetch_one(sql)
    assert before is not None and after is not None
    assert bytes(before["ciphertext"]) == bytes(after["ciphertext"])
    assert bytes(before["wrapped_dek"]) != bytes(after["wrapped_dek"])


async def test_reencrypt_draws_new_data_keys(db_config: dict[str, Any]) -> None:
    node = vault(db_config)
    await node.secrets.put("a", "value")
    await node.secrets.put("b", "other")
    sql = f"SELECT ciphertext FROM {node.secrets.table} WHERE name = 'a'"
    before = await node.db.fetch_val(sql)
    assert await node.secrets.reencrypt(name="a") == 1
    assert bytes(await node.db.fetch_val(sql)) != bytes(before)
    assert (await node.secrets.get("a")).reveal() == "value"
    assert await node.secrets.reencrypt() == 2


# ------------------------------------------------------------------------------------------------
# tampering and key loss


async def test_a_ciphertext_swapped_between_rows_is_corrupted(db_config: dict[str, Any]) -> None:
    node = vault(db_config)
    await node.secrets.put("a", "alpha")
    await node.secrets.put("b", "bravo")
    t = node.secrets.table
    rows = {r["name"]: r for r in await node.db.fetch_all(
        f"SELECT name, wrapped_dek, nonce, ciphertext FROM {t}")}
    async with node.db.transaction() as tx:
        for name, other in (("a", "b"), ("b", "a")):
            await tx.execute(f"UPDATE {t} SET wrapped_dek = :w, nonce = :n, ciphertext = :c "
                             "WHERE name = :name",
                             {"w": bytes(rows[other]["wrapped_dek"]),
                              "n": bytes(rows[other]["nonce"]),
                              "c": bytes(rows[other]["ciphertext"]), "name": name})
    with pytest.raises(SecretCorruptedError) as info:
        await node.secrets.get("a")
    err = info.value
    assert (err.name, err.version, err.key_id, err.reason) == ("a", 1, "k1",
                                                               "authentication_failed")
    assert "alpha" not in str(err) and "bravo" not in str(err)
    assert isinstance(err, ValueError)


async def test_a_flipped_byte_is_corrupted(db_config: dict[str, Any]) -> None:
    node = vault(db_config)
    await node.secrets.put("a", "alpha")
    t = node.secrets.table
    ct = bytearray(await node.db.fetch_val(f"SELECT ciphertext FROM {t}"))
    ct[0] ^= 1
    await node.db.execute(f"UPDATE {t} SET ciphertext = :c", {"c": bytes(ct)})
    with pytest.raises(SecretCorruptedError, match=r"secret 'a' v1 cannot be decrypted"):
        await node.secrets.get("a")


async def test_the_old_key_removed_before_rotation_names_the_key(
        db_config: dict[str, Any]) -> None:
    node = vault(db_config)
    await node.secrets.put("a", "alpha")
    lost = vault(db_config, keys=[K2])
    with pytest.raises(SecretCorruptedError) as info:
        await lost.secrets.get("a")
    assert info.value.key_id == "k1" and info.value.reason == "unknown_key"
    assert "wrapped by key 'k1', which is not in the encryption key ring" in str(info.value)
    report = await lost.secrets.rotate_keys()
    assert (report.rewrapped, report.failed, report.failed_keys) == (0, 1, ("k1",))


# ------------------------------------------------------------------------------------------------
# concurrency


_WRITER = textwrap.dedent("""
    import asyncio, json, sys
    from onex_compose import NodeEffect, compose
    db, key = json.loads(sys.argv[1]), sys.argv[2]
    node = compose(NodeEffect, ["secure_storage"])(capability_config={
        "encryption": {"keys": [key]}, "database": db, "secure_storage": {"keep_versions": 0}})
    async def main():
        return [await node.secrets.put("shared", f"w{i}") for i in range(25)]
    print(json.dumps(asyncio.run(main())))
""")


@pytest.fixture(params=["sqlite-file", pytest.param("postgres", marks=pytest.mark.postgres)])
async def shared_db(request: pytest.FixtureRequest, tmp_path: Path
                    ) -> AsyncIterator[dict[str, Any]]:
    """A database two processes can share: a SQLite file or a PostgreSQL schema."""
    if request.param == "sqlite-file":
        yield {"url": f"sqlite:///{tmp_path / 'secrets.db'}", "namespace": "shared"}
        await _sql.dispose_engines()
        return
    import asyncpg

    dsn = request.getfixturevalue("postgres_dsn")
    schema = f"onextest_{uuid.uuid4().hex[:10]}"
    yield {"url": dsn, "schema": schema, "namespace": "shared"}
    await _sql.dispose_engines()
    conn = await asyncpg.connect(_plain(dsn))
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def test_concurrent_puts_from_two_processes_get_unique_versions(
        shared_db: dict[str, Any]) -> None:
    node = vault(shared_db, keep_versions=0)
    await node.db.migrate()  # the table exists before the writers race
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, "-c", _WRITER, json.dumps(shared_db), K1,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 300)
    got: list[int] = []
    for proc, (out, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err.decode()[-2000:]
        versions = json.loads(out)
        assert versions == sorted(versions)  # increasing within each writer
        got += versions
    assert sorted(got) == list(range(1, 51))
    assert [v.version for v in await node.secrets.versions("shared")] == list(range(1, 51))


# ------------------------------------------------------------------------------------------------
# authorization and audit


class MixinAuthenticationStandIn:
    """Stands in for authentication (the tests set the principal themselves)."""

    __onex_capability__ = "authentication"
    __slots__ = ()


class _Recorder:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    async def record(self, action: str, *, resource: Any = None, outcome: str = "success",
                     reason: str | None = None, details: Any = None, actor: Any = None) -> None:
        p = _context.principal.get()
        self.records.append({"action": action, "resource": resource, "outcome": outcome,
                             "reason": reason, "details": dict(details or {}),
                             "actor": actor or (p.subject if p else None)})


class MixinAuditLogStandIn:
    """Stands in for audit_log: records what it is asked to."""

    __onex_capability__ = "audit_log"
    __slots__ = ()

    def setup_audit_log(self, config: Any = None) -> None:
        self.audit = _Recorder()  # type: ignore[attr-defined]


def _registry() -> Registry:
    reg = Registry(name="secure-storage-tests")
    reg.load_manifest(onex_compose.capabilities.MANIFEST)
    reg.register(MixinAuthenticationStandIn, name="authentication", replace=True,
                 requires=["metrics"], rank=180)
    reg.register(MixinAuditLogStandIn, name="audit_log", replace=True, rank=200)
    return reg


REG = _registry()
GuardedVault = compose(NodeEffect, ["secure_storage", "authorization", "audit_log"],
                       registry=REG)


@contextlib.contextmanager
def acting_as(p: Principal | None) -> Iterator[None]:
    token = _context.principal.set(p)
    try:
        yield
    finally:
        _context.principal.reset(token)


async def test_authorization_and_audit(db_config: dict[str, Any]) -> None:
    node = GuardedVault(capability_config={
        "encryption": {"keys": [K1]}, "database": db_config,
        "authorization": {"roles": {
            "ops": {"permissions": ["secrets:read:*", "secrets:write:*"]},
            "reader": {"permissions": ["secrets:read:db/password"]}},
            "deny": [{"permission": "secrets:read:api/token", "roles": ["ops"]}]}})
    ops = Principal("olga", "jwt", roles=["ops"])
    reader = Principal("rita", "jwt", roles=["reader"])
    with acting_as(ops):
        await node.secrets.put("db/password", MARKER)
        await node.secrets.put("api/token", MARKER)
        assert (await node.secrets.get("db/password")).reveal() == MARKER
        with pytest.raises(PermissionDeniedError) as info:
            await node.secrets.get("api/token")
    assert info.value.permission == "secrets:read:api/token"
    with acting_as(reader):
        assert (await node.secrets.get("db/password")).created_by == "olga"
        with pytest.raises(PermissionDeniedError):
            await node.secrets.put("db/password", "nope")
    with pytest.raises(PermissionDeniedError, match="unauthenticated"):
        await node.secrets.get("db/password")
    await node.authorizer.drain()
    records = node.audit.records
    assert [(r["action"], r["actor"], r["outcome"]) for r in records if r["action"].startswith(
        "secret.")] == [("secret.write", "olga", "success"), ("secret.write", "olga", "success"),
                        ("secret.read", "olga", "success"), ("secret.read", "rita", "success")]
    assert records[2]["details"] == {"name": "db/password", "version": 1}
    denials = [r for r in records if r["action"] == "authorize"]
    assert [(r["resource"], r["outcome"]) for r in denials] == [
        ("secrets:read:api/token", "denied"), ("secrets:write:db/password", "denied"),
        ("secrets:read:db/password", "denied")]
    assert MARKER not in json.dumps(records, default=str)


# ------------------------------------------------------------------------------------------------
# contract, health, leak


def test_contract_mirrors_the_config() -> None:
    contract = yaml.safe_load(CONTRACT.read_text())
    defaults = {k: v.default for k, v in SecureStorageConfig.model_fields.items()}
    assert contract["secure_storage_config"] == defaults
    assert contract["composition"]["rank"] == 210 and "guard_rank" not in contract["composition"]
    assert {m["name"] for m in contract["metrics"]} == {"secrets_operations_total",
                                                        "secrets_rewrapped_total"}
    assert MixinSecureStorage.__slots__ == () and "__init__" not in vars(MixinSecureStorage)
    names = [c["name"] for c in explain(Vault).to_dict()["capabilities"]]
    assert {"encryption", "database", "metrics", "secure_storage"} <= set(names)


async def test_health_reports_pending_rotation_and_missing_keys(
        db_config: dict[str, Any]) -> None:
    node = vault(db_config)
    await node.secrets.put("a", "x")
    assert (await node.secrets.health())["status"] == "healthy"
    assert (await vault(db_config, keys=[K2, K1]).secrets.health())["status"] == "degraded"
    lost = await vault(db_config, keys=[K2]).secrets.health()
    assert lost == {"status": "unhealthy", "pending_rotation": 1, "unknown_keys": ["k1"]}
    checked = compose(NodeEffect, ["secure_storage", "health_check"])(capability_config={
        "encryption": {"keys": [K1]}, "database": db_config})
    report = await checked.health_check()
    assert "secure_storage" in json.dumps(report, default=str)


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    from onex_compose.capabilities._log import logger

    lines: list[str] = []
    logger.enable("onex_compose")
    sink = logger.add(lambda m: lines.append(str(m)), level="DEBUG")
    try:
        yield lines
    finally:
        logger.remove(sink)
        logger.disable("onex_compose")


async def test_the_plaintext_never_leaks(db_config: dict[str, Any], log_lines: list[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEX_ENCRYPTION_KEYS", K1)
    Full = compose(NodeEffect, ["secure_storage", "logging", "health_check"])
    node = Full(capability_config={"encryption": {}, "database": {**db_config, "echo": True},
                                   "logging": {"level": "DEBUG"}})
    texts: list[str] = []
    s = node.secrets
    await s.put("leak/test", MARKER, metadata={"owner": "ops"})
    secret = await s.get("leak/test")
    assert secret.reveal() == MARKER
    texts += [repr(secret), str(secret), f"{secret}", repr(s), repr(node)]
    monkeypatch.setenv("ONEX_ENCRYPTION_KEYS", f"{K2},{K1}")
    node.setup_encryption({})
    await s.rotate_keys()
    t = s.table
    await node.db.execute(f"UPDATE {t} SET ciphertext = :c", {"c": b"garbage-bytes-here-x"})
    for attempt in (lambda: s.get("leak/test"), lambda: s.put("leak/test", MARKER * 10000),
                    lambda: s.get("missing"), lambda: s.put("bad name", MARKER)):
        with pytest.raises(Exception) as info:  # noqa: PT011 - each kind of failure
            await attempt()
        texts += [str(info.value), repr(info.value)]
    from onex_compose import NodeOrchestratorService

    secure_service = compose(NodeOrchestratorService, ["authentication", "authorization",
                                                       "audit_log", "encryption",
                                                       "secure_storage"])
    texts += [str(explain(Full)), str(explain(node)), str(explain(secure_service)),
              node.metrics.exposition(),
              json.dumps(node.metrics.snapshot(), default=str),
              json.dumps(await node.health_check(), default=str), *log_lines]
    blob = pickle.dumps(node)
    assert MARKER.encode() not in blob
    assert K1.split(":", 1)[1].encode() not in blob
    everything = "\n".join(texts)
    assert MARKER not in everything
    assert K1.split(":", 1)[1] not in everything and K2.split(":", 1)[1] not in everything
    assert any("UPDATE" in line or "INSERT" in line for line in log_lines)  # echo was on
    back = pickle.loads(blob)
    assert back.secrets.crypto.key_ids == ["k2", "k1"]


# ------------------------------------------------------------------------------------------------
# fault: the server killed mid-rotation


async def test_a_server_killed_mid_rotation_then_rotate_again_completes(
        private_postgres: Any) -> None:
    from onex_compose.capabilities.database import DatabaseError

    db = {"url": private_postgres.url.replace("postgresql://", "postgresql+asyncpg://"),
          "namespace": "fault", "pool_pre_ping": True, "connect_timeout": 2.0}
    node = vault(db, keep_versions=0)
    for i in range(30):
        await node.secrets.put(f"s{i:02d}", f"value-{i}")
    node.setup_encryption({"keys": [K2, K1]})
    real = type(node.crypto).rewrap
    calls = 0

    def rewrap_then_kill(self: Any, envelope: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 12:  # inside the third batch of 5: two batches are committed
            private_postgres.stop()
        return real(self, envelope)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(node.crypto), "rewrap", rewrap_then_kill)
        with pytest.raises(DatabaseError):
            await node.secrets.rotate_keys(batch=5)
    private_postgres.start()
    await _sql.dispose_engines()
    pending = await node.db.fetch_val(
        f"SELECT COUNT(*) FROM {node.secrets.table} WHERE kek_id = 'k1'")
    assert pending == 20  # two batches committed, the third rolled back
    report = await node.secrets.rotate_keys(batch=5)
    assert (report.rewrapped, report.failed) == (20, 0)
    for i in range(30):
        assert (await node.secrets.get(f"s{i:02d}")).reveal() == f"value-{i}"


async def test_accesses_are_recorded_in_the_real_audit_log_with_the_actor(
        db_config: dict[str, Any]) -> None:
    node = vault(db_config, cls=compose(NodeEffect, ["secure_storage", "audit_log"]))
    with acting_as(Principal("olga", "jwt", roles=["ops"])):
        await node.secrets.put("db/password", MARKER)
        assert (await node.secrets.get("db/password")).reveal() == MARKER
        await node.secrets.delete("db/password")
    node.setup_encryption({"keys": [K2, K1]})
    await node.secrets.rotate_keys()
    records = [r async for r in node.audit.query()]
    assert [(r.actor, r.action, r.resource, r.outcome) for r in records] == [
        ("olga", "secret.write", "secret:db/password", "success"),
        ("olga", "secret.read", "secret:db/password", "success"),
        ("olga", "secret.delete", "secret:db/password", "success"),
        (None, "keys.rotate", "kek:k2", "success")]
    assert records[1].details == {"name": "db/password", "version": 1}
    assert MARKER not in repr(records)
    assert (await node.audit.verify()).ok
