"""The database capability's configuration, errors, migrations and protocol."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from onex_compose.capabilities._sql import resolve_url
from onex_compose.exceptions import OnexError

ISOLATIONS = ("read_committed", "repeatable_read", "serializable")


with warnings.catch_warnings():  # the contract's key is "schema", which shadows the deprecated
    # BaseModel.schema() classmethod; the field is what the contract names
    warnings.filterwarnings("ignore", message=".*shadows an attribute in parent.*")

    class DatabaseConfig(BaseModel):
        """The ``database`` subcontract (every key of ``database_config`` in ``mixin_database.yaml``).

        Example:
            >>> DatabaseConfig(pool_size=2).pool_timeout
            10.0
        """

        model_config = ConfigDict(extra="forbid", frozen=True)

        url: str | None = Field(
            default=None, description="None: ONEX_DATABASE_URL, else the embedded memory DB of "
                                      "namespace")
        namespace: str = Field(default="onex", min_length=1,
                               description="prefix of the library's tables; name of the memory DB")
        schema: str | None = Field(  # type: ignore[assignment]
            default=None, description="PostgreSQL schema for connections and tables")
        pool_size: int = Field(default=5, ge=1)
        max_overflow: int = Field(default=5, ge=0)
        pool_timeout: float = Field(default=10.0, gt=0)
        pool_recycle: float = Field(default=1800.0, gt=0)
        pool_pre_ping: bool = True
        connect_timeout: float = Field(default=5.0, gt=0)
        statement_timeout: float | None = Field(default=None, gt=0)
        isolation: Literal["read_committed", "repeatable_read", "serializable"] | None = None
        retry_attempts: int = Field(default=3, ge=1)
        retry_initial_delay: float = Field(default=0.01, ge=0)
        retry_max_delay: float = Field(default=0.5, ge=0)
        sqlite_busy_timeout: float = Field(default=5.0, ge=0)
        sqlite_wal: bool = True
        migrate_on_start: bool = True
        echo: bool = False

        @field_validator("url")
        @classmethod
        def _check_url(cls, value: str | None) -> str | None:
            if value:
                resolve_url(value, "onex")  # ValueError listing the accepted schemes, masked
            return value

        @field_validator("namespace")
        @classmethod
        def _check_namespace(cls, value: str) -> str:
            if not value.replace("_", "").isalnum() or not value.isascii():
                raise ValueError(f"namespace must be letters, digits and '_' (it prefixes table "
                                 f"names), got {value!r}")
            return value

        @property
        def schema_name(self) -> str | None:
            """The configured PostgreSQL schema."""
            return self.schema  # type: ignore[return-value]

        def __repr__(self) -> str:
            from onex_compose._redact import scrub_text

            return scrub_text(super().__repr__())

        __str__ = __repr__


# -- errors ------------------------------------------------------------------------------------


class DatabaseError(OnexError):
    """Root of the database capability's errors (a SQL error keeps SQLAlchemy's as
    ``__cause__``; messages never include bound parameter values)."""

    onex_retriable = False

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class DatabaseUnavailableError(DatabaseError, ConnectionError):
    """The server cannot be reached (connect failure, connection lost)."""

    onex_retriable = True


class PoolExhaustedError(DatabaseError, TimeoutError):
    """No pooled connection became free within ``pool_timeout``."""

    onex_retriable = True

    def __init__(self, message: str, *, pool_size: int = 0, checked_out: int = 0,
                 pool_timeout: float = 0.0) -> None:
        super().__init__(message)
        self.pool_size = pool_size
        self.checked_out = checked_out
        self.pool_timeout = pool_timeout


class TransactionConflictError(DatabaseError):
    """A serialization failure or deadlock (SQLSTATE 40001 / 40P01) or a SQLite busy database:
    run the transaction again."""

    onex_retriable = True


class DatabaseIntegrityError(DatabaseError, ValueError):
    """A constraint violation (unique, foreign key, not null, check)."""

    onex_retriable = False


class MigrationError(DatabaseError):
    """A migration failed or an applied migration's checksum changed."""


class TransactionClosedError(DatabaseError, RuntimeError):
    """A ``tx`` used after its block ended."""


# -- migrations --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Migration:
    """One migration: an id (applied in registration order) and its SQL per dialect.

    ``sql`` is one statement, a list of statements, or a mapping ``{"sqlite": ...,
    "postgresql": ...}`` of either.

    Example:
        >>> m = Migration("001_create", {"sqlite": "CREATE TABLE t (x INT)",
        ...                              "postgresql": "CREATE TABLE t (x INT)"})
        >>> m.statements("sqlite")
        ['CREATE TABLE t (x INT)']
        >>> len(m.checksum("sqlite"))
        64
    """

    id: str
    sql: str | Sequence[str] | Mapping[str, str | Sequence[str]] = field(default="")

    def statements(self, dialect: str) -> list[str]:
        sql: Any = self.sql
        if isinstance(sql, Mapping):
            if dialect not in sql:
                raise MigrationError(f"migration {self.id!r} has no SQL for {dialect}")
            sql = sql[dialect]
        return [sql] if isinstance(sql, str) else list(sql)

    def checksum(self, dialect: str) -> str:
        return hashlib.sha256("\n;\n".join(self.statements(dialect)).encode()).hexdigest()


# -- protocol ----------------------------------------------------------------------------------


@runtime_checkable
class DatabaseProtocol(Protocol):
    """What ``self.db`` offers."""

    def transaction(self, isolation: str | None = None, readonly: bool = False) -> Any: ...

    async def execute(self, sql: Any, params: Mapping[str, Any] | None = None) -> int: ...

    async def fetch_all(self, sql: Any, params: Mapping[str, Any] | None = None
                        ) -> list[Mapping[str, Any]]: ...

    async def fetch_one(self, sql: Any, params: Mapping[str, Any] | None = None
                        ) -> Mapping[str, Any] | None: ...

    async def fetch_val(self, sql: Any, params: Mapping[str, Any] | None = None) -> Any: ...

    def stream(self, sql: Any, params: Mapping[str, Any] | None = None, *, batch: int = 500
               ) -> AsyncIterator[Mapping[str, Any]]: ...

    async def run_in_transaction(self, fn: Any, *args: Any, isolation: str | None = None,
                                 **kwargs: Any) -> Any: ...

    async def migrate(self) -> None: ...

    async def health(self) -> dict[str, Any]: ...
