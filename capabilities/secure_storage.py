"""secure_storage: an encrypted, versioned key-value store for secrets (``self.secrets``).

Seed 000's ``MixinSecureStorage`` ("Encrypted storage and key management"). Each version of a
secret is encrypted with a fresh data key (DEK, AES-256-GCM) and the DEK is wrapped by the
key-encryption key (KEK: the ``encryption`` capability's primary key), through
:meth:`~onex_compose.capabilities.encryption.Encryption.envelope_encrypt`. Rows are stored
through the ``database`` capability in ``<namespace>_secrets``::

    name, version, created_at, created_by, kek_id, wrapped_dek, nonce, ciphertext, metadata,
    deleted, PRIMARY KEY (name, version)

The data's associated data is ``"<namespace>|<name>|<version>"``, so a ciphertext copied to
another row never decrypts (:class:`SecretCorruptedError`).

**Values** are ``str`` or ``bytes`` (the type comes back as it went in) and are only reachable
through :meth:`Secret.reveal`: the ``repr``, ``str`` and ``format`` of a :class:`Secret` show
``***``, and pickling one raises ``TypeError``. ``list`` and ``versions`` never return values.

**Versions.** ``put`` writes version ``max + 1`` of the name. Concurrent writers (threads,
processes) get unique, increasing versions: PostgreSQL serialises the writers of one name with
an advisory transaction lock, and a writer that still loses the race (SQLite) retries on the
primary-key conflict. ``keep_versions`` older versions are purged on ``put`` (``0``: keep all).
``delete`` tombstones every version of the name and erases its key material and ciphertext
(crypto-shredding): ``get`` then raises :class:`SecretNotFoundError`; a later ``put`` starts a
new version.

**Rotation.** Add a new key first in the encryption capability's ``keys`` (it becomes the
primary; the old one stays in the ring to decrypt) and run :meth:`SecureStorage.rotate_keys`:
it rewraps the DEK of every row whose ``kek_id`` is not the primary, ``batch`` rows per
transaction, leaving the data ciphertext untouched. Reads keep working throughout (both keys are
in the ring). Each row's update is conditional on its old ``kek_id``, so re-running after a crash
finishes the job, and no row is lost or wrapped twice. Once every row is on the new key the old
key can leave the config. :meth:`SecureStorage.reencrypt` draws new DEKs and ciphertexts (a
suspected DEK compromise).

**Integration.** With ``authorization`` composed, ``get`` needs ``<prefix>:read:<name>`` and
``put``/``delete`` need ``<prefix>:write:<name>`` (``permission_prefix``, default ``secrets``);
``list`` needs ``<prefix>:list`` and ``rotate_keys``/``reencrypt`` need ``<prefix>:rotate``.
Permission grants are lower-case (authorization's syntax), so a secret whose name has capitals
is granted through a wildcard (``secrets:read:*``). With ``audit_log`` composed (and
``audit_access``), reads, writes, deletes and rotations are recorded as ``secret.read``,
``secret.write``, ``secret.delete`` and ``keys.rotate`` with the name and version only. With
``health_check``, the ``secure_storage`` check reports rows waiting for rotation (degraded) and
rows wrapped by a key the ring lacks (unhealthy).

Example:
    >>> import asyncio
    >>> from onex_compose import NodeEffect, compose
    >>> from onex_compose.capabilities.encryption import Encryption
    >>> Vault = compose(NodeEffect, ["secure_storage"])
    >>> node = Vault(capability_config={
    ...     "encryption": {"keys": [Encryption.generate_key("k1")]},
    ...     "database": {"namespace": "doctest_secrets"}})
    >>> async def demo():
    ...     version = await node.secrets.put("db/password", "s3cr3t", metadata={"owner": "ops"})
    ...     secret = await node.secrets.get("db/password")
    ...     return version, secret, secret.reveal()
    >>> asyncio.run(demo())
    (1, Secret('db/password', v1, ***), 's3cr3t')
"""

from __future__ import annotations

import asyncio
import builtins
import json
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator

from onex_compose import coerce_config, facility, has_capability
from onex_compose.capabilities import _context
from onex_compose.exceptions import OnexError

__all__ = [
    "MixinSecureStorage",
    "RotationReport",
    "Secret",
    "SecretCorruptedError",
    "SecretNotFoundError",
    "SecretVersion",
    "SecureStorage",
    "SecureStorageConfig",
    "SecureStorageProtocol",
]

OWNER = "secure_storage"
_STR, _BYTES = b"s", b"b"
_PREFIX = re.compile(r"[a-z0-9_.-]+")
_PUT_ATTEMPTS = 20


# ------------------------------------------------------------------------------------------------
# errors


class SecretNotFoundError(OnexError, KeyError):
    """No such secret (or version), or it was deleted.

    Attributes:
        name: the secret's name.
        version: the version asked for (``None``: the latest).
    """

    onex_retriable = False
    onex_breaker_neutral = True

    def __init__(self, name: str, version: int | None = None) -> None:
        self.name = name
        self.version = version
        which = "" if version is None else f" version {version}"
        super().__init__(f"secret {name!r}{which} not found (never written, purged or deleted)")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class SecretCorruptedError(OnexError, ValueError):
    """A stored secret did not decrypt: altered, moved to another row, or wrapped by a key the
    ring no longer has. Names only the secret's name, version and the key id.

    Attributes:
        name, version: the row.
        key_id: the KEK id the row names.
        reason: the :class:`~onex_compose.capabilities.encryption.DecryptionError` reason.
    """

    onex_retriable = False
    onex_breaker_neutral = True

    def __init__(self, name: str, version: int, key_id: str, reason: str) -> None:
        self.name = name
        self.version = version
        self.key_id = key_id
        self.reason = reason
        if reason == "unknown_key":
            why = (f"its data key is wrapped by key {key_id!r}, which is not in the encryption "
                   "key ring: put that key back in the encryption keys (after the primary) and "
                   "run rotate_keys() before removing it")
        else:
            why = (f"the stored row (key {key_id!r}) failed authentication: it was altered or "
                   "copied from another row")
        super().__init__(f"secret {name!r} v{version} cannot be decrypted: {why}")


# ------------------------------------------------------------------------------------------------
# config


class SecureStorageConfig(BaseModel):
    """The ``secure_storage`` subcontract (every key of ``secure_storage_config``).

    Attributes:
        name_pattern: the regular expression a secret name must match in full.
        max_value_size: the largest value, in bytes.
        keep_versions: versions kept per name (older ones are purged on ``put``; ``0``: all).
        read_cache_ttl: seconds a decrypted value stays cached in this process (``0``: never).
        audit_access: record accesses in the audit log when ``audit_log`` is composed.
        permission_prefix: the first segment of the permissions checked with authorization.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name_pattern: str = r"^[A-Za-z0-9_.\-/]{1,200}$"
    max_value_size: int = Field(default=65536, ge=1)
    keep_versions: int = Field(default=10, ge=0)
    read_cache_ttl: float = Field(default=0.0, ge=0)
    audit_access: bool = True
    permission_prefix: str = "secrets"

    @field_validator("name_pattern")
    @classmethod
    def _check_pattern(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"name_pattern is not a regular expression: {exc}") from None
        return value

    @field_validator("permission_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if _PREFIX.fullmatch(value) is None:
            raise ValueError(f"permission_prefix must be one permission segment (a-z 0-9 _ . -),"
                             f" got {value!r}")
        return value


# ------------------------------------------------------------------------------------------------
# values


class Secret:
    """One decrypted version of a secret. :meth:`reveal` is the only way to its value.

    Attributes:
        name, version, metadata, created_at, created_by: the row's public data.

    Example:
        >>> s = Secret("api/token", 3, {}, None, None, "hunter2")
        >>> s, str(s), f"{s}"
        (Secret('api/token', v3, ***), "Secret('api/token', v3, ***)", "Secret('api/token', v3, ***)")
        >>> s.reveal()
        'hunter2'
    """

    __slots__ = ("_value", "created_at", "created_by", "metadata", "name", "version")

    def __init__(self, name: str, version: int, metadata: Mapping[str, Any],
                 created_at: datetime | None, created_by: str | None,
                 value: str | bytes) -> None:
        self.name = name
        self.version = version
        self.metadata = dict(metadata)
        self.created_at = created_at
        self.created_by = created_by
        self._value = value

    def reveal(self) -> str | bytes:
        """The secret's value (``str`` or ``bytes``, as it was put)."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.name!r}, v{self.version}, ***)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return (self.name, self.version) == (other.name, other.version)

    def __hash__(self) -> int:
        return hash((self.name, self.version))

    def __reduce__(self) -> Any:
        raise TypeError("a Secret holds a decrypted value and cannot be pickled; store its name "
                        "and version and get() it again")

    def __getstate__(self) -> Any:
        raise TypeError("a Secret holds a decrypted value and cannot be pickled")


@dataclass(frozen=True)
class SecretVersion:
    """One stored version, without its value (what :meth:`SecureStorage.versions` lists)."""

    name: str
    version: int
    created_at: datetime
    created_by: str | None
    kek_id: str
    deleted: bool
    metadata: Mapping[str, Any]


@dataclass(frozen=True)
class RotationReport:
    """What :meth:`SecureStorage.rotate_keys` did.

    Attributes:
        rewrapped: rows whose data key is now wrapped by the primary key.
        skipped: rows another rotation rewrapped in the meantime.
        failed: rows that could not be unwrapped (their key is not in the ring).
        failed_keys: the key ids of the failed rows.
        primary_key_id: the key every rewrapped row is now on.
    """

    rewrapped: int
    skipped: int
    failed: int
    failed_keys: tuple[str, ...] = ()
    primary_key_id: str = ""


class SecureStorageProtocol(Protocol):
    """What ``self.secrets`` offers (the contract's actions)."""

    async def put(self, name: str, value: str | bytes,
                  metadata: Mapping[str, Any] | None = None) -> int: ...

    async def get(self, name: str, version: int | None = None) -> Secret: ...

    async def delete(self, name: str) -> int: ...

    async def list(self, prefix: str = "") -> list[str]: ...

    async def rotate_keys(self, batch: int = 500) -> RotationReport: ...


# ------------------------------------------------------------------------------------------------
# the facility


def _migrations(table: str) -> Any:
    from onex_compose.capabilities.database import Migration

    def create(blob: str) -> str:
        return (f"CREATE TABLE IF NOT EXISTS {table} (name VARCHAR(200) NOT NULL, "
                "version INTEGER NOT NULL, created_at DOUBLE PRECISION NOT NULL, "
                "created_by VARCHAR(200), kek_id VARCHAR(64) NOT NULL, "
                f"wrapped_dek {blob} NOT NULL, nonce {blob} NOT NULL, ciphertext {blob} NOT NULL, "
                "metadata TEXT NOT NULL, deleted BOOLEAN NOT NULL DEFAULT FALSE, "
                "PRIMARY KEY (name, version))")

    index = f"CREATE INDEX IF NOT EXISTS {table}_kek ON {table} (kek_id)"
    return [Migration("001_secrets", {"sqlite": [create("BLOB"), index],
                                      "postgresql": [create("BYTEA"), index]})]


class SecureStorage:
    """Encrypted, versioned secrets in the database (the ``secrets`` facility).

    Args:
        config: a :class:`SecureStorageConfig`, a mapping of its fields, or ``None``.
        crypto: the node's ``Encryption`` facility (the KEK ring).
        db: the node's ``Database`` facility.
        metrics: the node's metrics facility, or ``None``.
        node: the node (for ``authorizer`` and ``audit`` when composed), or ``None``.
        authorize: check permissions through ``node.authorizer``.
        audit: record accesses through ``node.audit``.
        clock: monotonic seconds for the read cache; ``wall_clock``: epoch seconds for
            ``created_at``.
    """

    def __init__(self, config: SecureStorageConfig | Mapping[str, Any] | None = None, *,
                 crypto: Any, db: Any, metrics: Any = None, node: Any = None,
                 authorize: bool = False, audit: bool = False,
                 clock: Callable[[], float] = _context.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        cfg: SecureStorageConfig = coerce_config(SecureStorageConfig, config, OWNER)
        self.config = cfg
        self._crypto = crypto
        self.db = db
        self.metrics = metrics
        self._node = node
        self._authorize = authorize and node is not None
        self._audit = audit and cfg.audit_access and node is not None
        self.clock = clock
        self.wall_clock = wall_clock
        self._name = re.compile(cfg.name_pattern)
        self._cache: dict[tuple[str, int | None], tuple[float, Secret]] = {}
        self._ttl = cfg.read_cache_ttl
        self._counters: dict[tuple[str, str], Callable[[], Any]] = {}
        self.table = f"{db.config.namespace}_secrets"
        db.register_migrations(OWNER, _migrations(self.table))

    @property
    def crypto(self) -> Any:
        """The key ring: the node's current ``crypto`` (so reconfiguring encryption, e.g. a new
        primary key, takes effect here at once), or the one given."""
        node = self._node
        return node.crypto if node is not None else self._crypto

    def __repr__(self) -> str:
        return (f"<SecureStorage table={self.table!r} kek={self.crypto.primary_key_id!r} "
                f"keep_versions={self.config.keep_versions}>")

    def __reduce__(self) -> Any:
        raise TypeError("SecureStorage is rebuilt by its node's setup; pickle the node instead")

    # -- helpers ------------------------------------------------------------------------------

    def _check_name(self, name: str) -> None:
        if not isinstance(name, str) or self._name.fullmatch(name) is None:
            shown = name if isinstance(name, str) and len(name) <= 200 else type(name).__name__
            raise ValueError(f"invalid secret name {shown!r}: it must match name_pattern "
                             f"{self.config.name_pattern}")

    def _aad(self, name: str, version: int) -> bytes:
        return f"{self.db.config.namespace}|{name}|{version}".encode()

    def _count(self, op: str, outcome: str) -> None:
        counter = self._counters.get((op, outcome))
        if counter is None:
            metrics = self.metrics
            if metrics is None:
                return
            labels = {"op": op, "outcome": outcome}
            bind = getattr(metrics, "bind_counter", None)
            if bind is not None:
                counter = bind("secrets_operations_total", labels=labels)
            else:
                def counter(_labels: dict[str, str] = labels) -> None:
                    metrics.increment("secrets_operations_total", 1, _labels)
            self._counters[(op, outcome)] = counter
        counter()

    def _require(self, action: str, name: str | None) -> None:
        if not self._authorize:
            return
        prefix = self.config.permission_prefix
        permission = f"{prefix}:{action}" if name is None else f"{prefix}:{action}:{name}"
        self._node.authorizer.require(permission)

    async def _record(self, action: str, resource: str, outcome: str,
                      details: Mapping[str, Any]) -> None:
        if self._audit:
            await self._node.audit.record(action, resource=resource, outcome=outcome,
                                          details=dict(details))

    async def _ready(self) -> None:
        db = self.db
        if OWNER not in db._migrated:
            await db.ensure_migrated(OWNER)

    def _forget(self, name: str) -> None:
        if self._cache:
            for key in [k for k in self._cache if k[0] == name]:
                del self._cache[key]

    def _corrupted(self, exc: Exception, name: str, version: int, key_id: str
                   ) -> SecretCorruptedError:
        reason = getattr(exc, "reason", "malformed")
        if reason == "unknown_key" and getattr(exc, "key_id", None):
            key_id = exc.key_id  # type: ignore[attr-defined]
        self._count("get", "corrupted")
        return SecretCorruptedError(name, version, key_id, reason)

    # -- put ----------------------------------------------------------------------------------

    async def put(self, name: str, value: str | bytes,
                  metadata: Mapping[str, Any] | None = None) -> int:
        """Store a new version of ``name``; returns its version number.

        Raises:
            ValueError: an invalid name (the message shows the pattern) or a value larger than
                ``max_value_size`` (the message gives the size and the limit).
            TypeError: a value that is neither ``str`` nor ``bytes``.
            PermissionDeniedError: with authorization, no ``<prefix>:write:<name>``.
        """
        self._check_name(name)
        if isinstance(value, str):
            plain = _STR + value.encode("utf-8")
        elif isinstance(value, bytes | bytearray | memoryview):
            plain = _BYTES + bytes(value)
        else:
            raise TypeError(f"a secret value is str or bytes, not {type(value).__name__}")
        size = len(plain) - 1
        if size > self.config.max_value_size:
            raise ValueError(f"secret {name!r} is {size} bytes, over the limit of "
                             f"{self.config.max_value_size} bytes (max_value_size)")
        meta = json.dumps(dict(metadata or {}), sort_keys=True, default=str)
        self._require("write", name)
        await self._ready()
        principal = _context.principal.get()
        by = principal.subject if principal is not None else None
        from onex_compose.capabilities.database import (
            DatabaseIntegrityError,
            TransactionConflictError,
        )

        version = 0
        for attempt in range(_PUT_ATTEMPTS):
            try:
                version = await self._insert(name, plain, meta, by)
                break
            except (DatabaseIntegrityError, TransactionConflictError):
                # another writer took the version (or the SQLite write lock): take the next
                if attempt == _PUT_ATTEMPTS - 1:
                    self._count("put", "error")
                    raise
                await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
        self._forget(name)
        self._count("put", "ok")
        await self._record("secret.write", f"secret:{name}", "success",
                           {"name": name, "version": version})
        return version

    async def _insert(self, name: str, plain: bytes, meta: str, by: str | None) -> int:
        t = self.table
        async with self.db.transaction() as tx:
            if self.db.dialect == "postgresql":
                await tx.execute("SELECT pg_advisory_xact_lock(hashtext(:k))",
                                 {"k": f"{t}|{name}"})
            last = await tx.fetch_val(f"SELECT MAX(version) FROM {t} WHERE name = :n",
                                      {"n": name})
            version = int(last or 0) + 1
            env = self.crypto.envelope_encrypt(plain, self._aad(name, version))
            await tx.execute(
                f"INSERT INTO {t} (name, version, created_at, created_by, kek_id, wrapped_dek, "
                "nonce, ciphertext, metadata, deleted) VALUES (:n, :v, :at, :by, :k, :w, :nonce, "
                ":c, :m, :d)",
                {"n": name, "v": version, "at": self.wall_clock(), "by": by, "k": env.kek_id,
                 "w": env.wrapped_dek, "nonce": env.nonce, "c": env.ciphertext, "m": meta,
                 "d": False})
            keep = self.config.keep_versions
            if keep:
                await tx.execute(f"DELETE FROM {t} WHERE name = :n AND version <= :v",
                                 {"n": name, "v": version - keep})
        return version

    # -- get ----------------------------------------------------------------------------------

    async def get(self, name: str, version: int | None = None) -> Secret:
        """The latest version of ``name`` (or ``version``), decrypted.

        Raises:
            SecretNotFoundError: no such secret or version, or it was deleted.
            SecretCorruptedError: the row did not decrypt (names the key id).
            PermissionDeniedError: with authorization, no ``<prefix>:read:<name>``.
        """
        ttl = self._ttl
        if ttl:  # only valid names are ever cached, so a hit skips the name check
            hit = self._cache.get((name, version))
            if hit is not None and hit[0] > self.clock():
                self._require("read", name)
                self._count("get", "cached")
                if self._audit:  # every read is audited, cached or not
                    await self._record("secret.read", f"secret:{name}", "success",
                                       {"name": name, "version": hit[1].version, "cached": True})
                return hit[1]
        self._check_name(name)
        self._require("read", name)
        await self._ready()
        t = self.table
        cols = ("version, created_at, created_by, kek_id, wrapped_dek, nonce, ciphertext, "
                "metadata")
        if version is None:
            row = await self.db.fetch_one(
                f"SELECT {cols} FROM {t} WHERE name = :n AND deleted = :d "
                "ORDER BY version DESC LIMIT 1", {"n": name, "d": False})
        else:
            row = await self.db.fetch_one(
                f"SELECT {cols} FROM {t} WHERE name = :n AND version = :v AND deleted = :d",
                {"n": name, "v": version, "d": False})
        if row is None:
            self._count("get", "not_found")
            raise SecretNotFoundError(name, version)
        secret = self._open(name, row)
        if ttl:
            self._cache[(name, version)] = (self.clock() + ttl, secret)
        self._count("get", "ok")
        await self._record("secret.read", f"secret:{name}", "success",
                           {"name": name, "version": secret.version})
        return secret

    def _open(self, name: str, row: Mapping[str, Any]) -> Secret:
        from onex_compose.capabilities.encryption import DecryptionError, Envelope

        v = int(row["version"])
        env = Envelope(row["kek_id"], bytes(row["wrapped_dek"]), bytes(row["nonce"]),
                       bytes(row["ciphertext"]))
        try:
            plain = self.crypto.envelope_decrypt(env, self._aad(name, v))
        except DecryptionError as exc:
            raise self._corrupted(exc, name, v, row["kek_id"]) from None
        kind, body = plain[:1], plain[1:]
        value: str | bytes = body.decode("utf-8") if kind == _STR else body
        created = datetime.fromtimestamp(float(row["created_at"]), UTC)
        return Secret(name, v, json.loads(row["metadata"]), created, row["created_by"], value)

    # -- delete, list, versions -----------------------------------------------------------------

    async def delete(self, name: str) -> int:
        """Tombstone every version of ``name`` and erase their key material and ciphertext;
        returns how many versions were live.

        Raises:
            SecretNotFoundError: no live version of ``name``.
            PermissionDeniedError: with authorization, no ``<prefix>:write:<name>``.
        """
        self._check_name(name)
        self._require("write", name)
        await self._ready()
        changed = await self.db.execute(
            f"UPDATE {self.table} SET deleted = :t, wrapped_dek = :e, nonce = :e, "
            "ciphertext = :e WHERE name = :n AND deleted = :f",
            {"t": True, "f": False, "e": b"", "n": name})
        self._forget(name)
        if changed <= 0:
            self._count("delete", "not_found")
            raise SecretNotFoundError(name)
        self._count("delete", "ok")
        await self._record("secret.delete", f"secret:{name}", "success",
                           {"name": name, "versions": changed})
        return int(changed)

    async def list(self, prefix: str = "") -> list[str]:
        """The names of live secrets starting with ``prefix``, sorted (never values)."""
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a string, got {type(prefix).__name__}")
        self._require("list", None)
        await self._ready()
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = await self.db.fetch_all(
            f"SELECT DISTINCT name FROM {self.table} WHERE deleted = :f AND name LIKE :p "
            "ESCAPE '\\' ORDER BY name", {"f": False, "p": escaped + "%"})
        self._count("list", "ok")
        return [r["name"] for r in rows]

    async def versions(self, name: str) -> builtins.list[SecretVersion]:
        """Every stored version of ``name`` (tombstoned ones included), oldest first, without
        values."""
        self._check_name(name)
        self._require("read", name)
        await self._ready()
        rows = await self.db.fetch_all(
            f"SELECT version, created_at, created_by, kek_id, deleted, metadata FROM "
            f"{self.table} WHERE name = :n ORDER BY version", {"n": name})
        self._count("list", "ok")
        return [SecretVersion(name, int(r["version"]),
                              datetime.fromtimestamp(float(r["created_at"]), UTC),
                              r["created_by"], r["kek_id"], bool(r["deleted"]),
                              json.loads(r["metadata"])) for r in rows]

    # -- keys ---------------------------------------------------------------------------------

    async def rotate_keys(self, batch: int = 500) -> RotationReport:
        """Rewrap the data key of every row not on the primary KEK, ``batch`` rows per
        transaction (resumable and idempotent; the data ciphertexts are untouched).

        Rows whose key is not in the ring are counted in ``failed`` (with their key ids) and
        left as they are.
        """
        from onex_compose.capabilities.encryption import DecryptionError, Envelope

        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        self._require("rotate", None)
        await self._ready()
        primary = self.crypto.primary_key_id
        t = self.table
        rewrapped = skipped = failed = 0
        failed_keys: set[str] = set()
        after: tuple[str, int] = ("", 0)
        while True:
            async with self.db.transaction() as tx:
                rows = await tx.fetch_all(
                    f"SELECT name, version, kek_id, wrapped_dek, nonce FROM {t} "
                    "WHERE kek_id <> :p AND deleted = :f AND (name > :an OR (name = :an AND "
                    "version > :av)) ORDER BY name, version LIMIT :b",
                    {"p": primary, "f": False, "an": after[0], "av": after[1], "b": batch})
                for row in rows:
                    env = Envelope(row["kek_id"], bytes(row["wrapped_dek"]), bytes(row["nonce"]),
                                   b"")
                    try:
                        new = self.crypto.rewrap(env)
                    except DecryptionError:
                        failed += 1
                        failed_keys.add(row["kek_id"])
                        continue
                    changed = await tx.execute(
                        f"UPDATE {t} SET kek_id = :k, wrapped_dek = :w WHERE name = :n AND "
                        "version = :v AND kek_id = :old",
                        {"k": new.kek_id, "w": new.wrapped_dek, "n": row["name"],
                         "v": row["version"], "old": row["kek_id"]})
                    if changed == 1:
                        rewrapped += 1
                    else:
                        skipped += 1
            if rows:
                after = (rows[-1]["name"], int(rows[-1]["version"]))
            if len(rows) < batch:
                break
        self._cache.clear()
        if self.metrics is not None and rewrapped:
            self.metrics.increment("secrets_rewrapped_total", rewrapped)
        self._count("rotate", "ok" if not failed else "partial")
        report = RotationReport(rewrapped, skipped, failed, tuple(sorted(failed_keys)), primary)
        await self._record("keys.rotate", f"kek:{primary}", "success" if not failed else
                           "failure", {"rewrapped": rewrapped, "failed": failed})
        return report

    async def reencrypt(self, name: str | None = None) -> int:
        """Give every live version (of ``name``, or of every secret) a new data key and a new
        ciphertext under the primary KEK; returns how many rows were re-encrypted.

        Raises:
            SecretCorruptedError: a row did not decrypt (nothing after it is changed).
        """
        if name is not None:
            self._check_name(name)
        self._require("rotate", None)
        await self._ready()
        t = self.table
        where, params = ("name = :n AND ", {"n": name}) if name is not None else ("", {})
        count = 0
        async with self.db.transaction() as tx:
            rows = await tx.fetch_all(
                f"SELECT name, version, created_at, created_by, kek_id, wrapped_dek, nonce, "
                f"ciphertext, metadata FROM {t} WHERE {where}deleted = :f ORDER BY name, "
                "version", {**params, "f": False})
            for row in rows:
                secret = self._open(row["name"], row)
                value = secret.reveal()
                plain = (_STR + value.encode("utf-8")) if isinstance(value, str) else (
                    _BYTES + value)
                env = self.crypto.envelope_encrypt(plain, self._aad(row["name"], secret.version))
                await tx.execute(
                    f"UPDATE {t} SET kek_id = :k, wrapped_dek = :w, nonce = :nonce, "
                    "ciphertext = :c WHERE name = :n AND version = :v",
                    {"k": env.kek_id, "w": env.wrapped_dek, "nonce": env.nonce,
                     "c": env.ciphertext, "n": row["name"], "v": secret.version})
                count += 1
        self._cache.clear()
        self._count("rotate", "ok")
        await self._record("keys.rotate", f"kek:{self.crypto.primary_key_id}", "success",
                           {"reencrypted": count})
        return count

    async def health(self) -> dict[str, Any]:
        """``{"status", "pending_rotation", "unknown_keys"}``: rows on a key other than the
        primary (degraded) and rows on a key the ring lacks (unhealthy)."""
        await self._ready()
        rows = await self.db.fetch_all(
            f"SELECT kek_id, COUNT(*) AS n FROM {self.table} WHERE deleted = :f GROUP BY kek_id",
            {"f": False})
        ring = set(self.crypto.key_ids)
        primary = self.crypto.primary_key_id
        pending = sum(int(r["n"]) for r in rows if r["kek_id"] != primary)
        unknown = sorted(r["kek_id"] for r in rows if r["kek_id"] not in ring)
        status = "unhealthy" if unknown else ("degraded" if pending else "healthy")
        return {"status": status, "pending_rotation": pending, "unknown_keys": unknown}


# ------------------------------------------------------------------------------------------------
# the mixin


class MixinSecureStorage:
    """Encrypted storage and key management: ``self.secrets`` (a :class:`SecureStorage`).

    Requires ``encryption`` (the KEK ring), ``database`` (the rows) and ``metrics``; checks
    permissions with ``authorization`` and records accesses with ``audit_log`` when composed.
    """

    __onex_capability__ = "secure_storage"
    __slots__ = ()

    def setup_secure_storage(self, config: SecureStorageConfig | Mapping[str, Any] | None = None
                             ) -> None:
        """Build ``self.secrets`` on the node's ``crypto`` and ``db``."""
        cfg = coerce_config(SecureStorageConfig, config, OWNER)
        node = cast(Any, self)
        node.secrets = _build(node, cfg)
        if has_capability(self, "health_check"):
            node.register_health_check(node.secrets.health, name=OWNER)

    @facility
    def secrets(self) -> SecureStorage:
        """The node's secure storage (default config when setup never ran)."""
        return _build(cast(Any, self), SecureStorageConfig())


def _build(node: Any, cfg: SecureStorageConfig) -> SecureStorage:
    return SecureStorage(cfg, crypto=None, db=node.db, metrics=node.metrics, node=node,
                         authorize=has_capability(node, "authorization"),
                         audit=has_capability(node, "audit_log"))
