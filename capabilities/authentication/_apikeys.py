"""authentication: API keys: ``<prefix><key_id>_<secret>``, stored as HMAC-SHA256(pepper, secret).

Keys are random (a 16-hex-digit id and 256 bits of secret), so a keyed hash is enough: Argon2
or bcrypt exist for low-entropy passwords and would cost milliseconds per request. A key is
looked up by its id and its hash compared with :func:`hmac.compare_digest`. Lookups are never
cached, so revoking a key in the database takes effect at once, in every process.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from typing import Any

from onex_compose.capabilities._context import Principal
from onex_compose.capabilities.authentication._model import (
    ApiKeyCreated,
    ApiKeyEntry,
    AuthenticationError,
)
from onex_compose.exceptions import ConfigurationError

__all__ = ["ApiKeyHasher", "ConfigKeyStore", "DatabaseKeyStore", "new_api_key"]

_MIGRATION_OWNER = "authentication"


def _fail(reason: str, message: str) -> AuthenticationError:
    return AuthenticationError(reason, message, scheme="api_key")


def new_api_key(prefix: str) -> ApiKeyCreated:
    """A fresh random key: ``<prefix><16 hex digits>_<43 base64url chars>``."""
    key_id = secrets.token_hex(8)
    return ApiKeyCreated(key_id, f"{prefix}{key_id}_{secrets.token_urlsafe(32)}")


class ApiKeyHasher:
    """Splits keys and hashes their secret part under the pepper.

    HMAC (RFC 2104) is computed from two SHA-256 states prepared once from the pepper (the
    inner ``key ^ ipad`` and outer ``key ^ opad`` blocks); each hash copies them. That is the
    same function as ``hmac.new(pepper, secret, "sha256")`` (a test checks it) at about half
    the cost of copying an OpenSSL HMAC context.
    """

    __slots__ = ("_inner", "_outer", "prefix")

    def __init__(self, pepper: str, prefix: str) -> None:
        key = pepper.encode()
        if len(key) > 64:  # the SHA-256 block size
            key = hashlib.sha256(key).digest()
        key = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
        self.prefix = prefix

    def __repr__(self) -> str:
        return f"<ApiKeyHasher prefix={self.prefix!r} pepper=***>"

    def __reduce__(self) -> Any:
        raise TypeError("an ApiKeyHasher holds the pepper and does not pickle")

    def split(self, key: str) -> tuple[str, str]:
        """``(key_id, secret)``; a :class:`AuthenticationError` (``malformed``) otherwise."""
        prefix = self.prefix
        if not key.startswith(prefix) or len(key) > 512:
            raise _fail("malformed", f"an API key starts with {prefix!r} and looks like "
                        f"{prefix}<key_id>_<secret>")
        key_id, sep, secret = key[len(prefix):].partition("_")
        if not sep or not key_id or not secret or not key_id.isalnum():
            raise _fail("malformed", f"an API key looks like {prefix}<key_id>_<secret>")
        return key_id, secret

    def digest(self, secret: str) -> str:
        """Hex HMAC-SHA256(pepper, secret)."""
        return self.raw_digest(secret).hex()

    def raw_digest(self, secret: str) -> bytes:
        """HMAC-SHA256(pepper, secret), 32 bytes."""
        inner = self._inner.copy()
        inner.update(secret.encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def hash_key(self, key: str) -> str:
        """The stored hash for a whole key (what ``api_keys.<id>.hash`` holds)."""
        try:
            return self.digest(self.split(key)[1])
        except AuthenticationError as exc:
            raise ValueError(exc.detail) from None


def _principal(key_id: str, subject: str, roles: Any, scopes: Any,
               tenant: str | None) -> Principal:
    return Principal(subject, "api_key", roles=roles, scopes=scopes, tenant=tenant,
                     key_id=key_id)


class ConfigKeyStore:
    """API keys from ``api_keys`` in the config (create and revoke by editing the config)."""

    kind = "config"

    def __init__(self, entries: Mapping[str, ApiKeyEntry], hasher: ApiKeyHasher) -> None:
        self.hasher = hasher
        # key_id -> (32-byte hash, principal): the principal is immutable, so it is built once
        self.entries = {kid: (bytes.fromhex(e.hash), _principal(kid, e.subject, e.roles,
                                                                e.scopes, e.tenant))
                        for kid, e in entries.items()}

    def verify(self, key: str) -> Principal:
        key_id, secret = self.hasher.split(key)
        entry = self.entries.get(key_id)
        if entry is None:
            raise _fail("unknown_api_key", f"no API key with id {key_id[:32]!r}")
        if not hmac.compare_digest(self.hasher.raw_digest(secret), entry[0]):
            raise _fail("unknown_api_key", f"API key {key_id[:32]!r} does not match its hash")
        return entry[1]

    def refuse(self, what: str) -> ConfigurationError:
        return ConfigurationError(
            f"authentication: {what} needs api_key_store: database (with the database "
            "capability composed). With the config store, make a key with "
            "node.authenticator.generate_api_key(), put node.authenticator.hash_api_key(key) "
            "under api_keys.<key_id>.hash with its subject and roles, and remove the entry to "
            "revoke it", capability="authentication")


class DatabaseKeyStore:
    """API keys in ``<namespace>_api_keys`` through the node's ``database`` capability."""

    kind = "database"

    def __init__(self, db: Any, hasher: ApiKeyHasher) -> None:
        from onex_compose.capabilities.database import Migration

        self.db = db
        self.hasher = hasher
        self.table = f"{db.config.namespace}_api_keys"
        t = self.table
        db.register_migrations(_MIGRATION_OWNER, [Migration("001_api_keys", [
            f"CREATE TABLE IF NOT EXISTS {t} (key_id VARCHAR(64) PRIMARY KEY, "
            "hash VARCHAR(64) NOT NULL, subject VARCHAR(500) NOT NULL, roles TEXT NOT NULL, "
            "scopes TEXT NOT NULL, tenant VARCHAR(500), created_at DOUBLE PRECISION NOT NULL, "
            "revoked_at DOUBLE PRECISION)"])])

    async def _ready(self) -> None:
        await self.db.ensure_migrated(_MIGRATION_OWNER)

    async def verify(self, key: str) -> Principal:
        key_id, secret = self.hasher.split(key)
        await self._ready()
        row = await self.db.fetch_one(
            f"SELECT hash, subject, roles, scopes, tenant, revoked_at FROM {self.table} "
            "WHERE key_id = :k", {"k": key_id})
        if row is None:
            raise _fail("unknown_api_key", f"no API key with id {key_id[:32]!r}")
        if not hmac.compare_digest(self.hasher.digest(secret).encode(),
                                   str(row["hash"]).encode()):
            raise _fail("unknown_api_key", f"API key {key_id[:32]!r} does not match its hash")
        if row["revoked_at"] is not None:
            raise _fail("revoked", f"API key {key_id[:32]!r} was revoked")
        return _principal(key_id, row["subject"], json.loads(row["roles"]),
                          json.loads(row["scopes"]), row["tenant"])

    async def create(self, subject: str, roles: Any, scopes: Any,
                     tenant: str | None) -> ApiKeyCreated:
        created = new_api_key(self.hasher.prefix)
        secret = self.hasher.split(created.key)[1]
        await self._ready()
        await self.db.execute(
            f"INSERT INTO {self.table} (key_id, hash, subject, roles, scopes, tenant, "
            "created_at, revoked_at) VALUES (:k, :h, :s, :r, :sc, :t, :c, NULL)",
            {"k": created.key_id, "h": self.hasher.digest(secret), "s": subject,
             "r": json.dumps(sorted(roles)), "sc": json.dumps(sorted(scopes)), "t": tenant,
             "c": time.time()})
        return created

    async def revoke(self, key_id: str) -> bool:
        await self._ready()
        count = await self.db.execute(
            f"UPDATE {self.table} SET revoked_at = :t WHERE key_id = :k AND revoked_at IS NULL",
            {"t": time.time(), "k": key_id})
        return bool(count)
